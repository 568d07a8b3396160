"""The training loop: resume equals an uninterrupted run, schedules, negatives, safety."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import make_data, run_fit, tiny_backbone, training_config  # noqa: E402

from dqe_cir_pipeline.model.backbone import Backbone  # noqa: E402
from dqe_cir_pipeline.model.config import RuntimeConfig  # noqa: E402
from dqe_cir_pipeline.model.dqe import DQEConfig  # noqa: E402
from dqe_cir_pipeline.model.evaluate import EvalSet  # noqa: E402
from dqe_cir_pipeline.model.factory import build_model  # noqa: E402
from dqe_cir_pipeline.model.mining import random_negatives, zone_negatives  # noqa: E402
from dqe_cir_pipeline.model.mining_result import MiningResult  # noqa: E402
from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives, sample_negatives  # noqa: E402
from dqe_cir_pipeline.model.optim import lr_lambda  # noqa: E402
from dqe_cir_pipeline.model.state import CheckpointMismatchError  # noqa: E402
from dqe_cir_pipeline.model.train import FitData, fit  # noqa: E402
from dqe_cir_pipeline.model.train_config import LoopConfig, TrainingConfig  # noqa: E402


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    torch.set_num_threads(1)
    return tiny_backbone(tmp_path_factory.mktemp("tiny"))


def test_killed_run_resumes_to_the_same_result(backbone: Backbone, tmp_path: Path) -> None:
    full = run_fit(backbone, tmp_path / "a")
    first = run_fit(backbone, tmp_path / "b", stop=1)
    assert len(first.history) == 1 and (tmp_path / "b" / "last.pt").exists()
    resumed = run_fit(backbone, tmp_path / "b")
    assert resumed.resumed_from_epoch == 1
    assert len(resumed.history) == len(full.history) == 3
    for a, b in zip(full.history, resumed.history, strict=True):
        for key in a:
            if "seconds" not in key and "per_s" not in key:
                assert a[key] == pytest.approx(b[key], abs=1e-6), key
    sa, sb = full.best_checkpoint["model"], resumed.best_checkpoint["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], atol=1e-6), k


def test_resume_refuses_a_changed_recipe(backbone: Backbone, tmp_path: Path) -> None:
    run_fit(backbone, tmp_path, stop=1)
    with pytest.raises(CheckpointMismatchError, match="training.optim.lr"):
        data, feats, val = make_data()
        cfg = training_config(
            epochs=3,
            batch_size=8,
            lr=5e-4,
            warmup_steps=2,
            refresh_interval=1,
            run_dir=str(tmp_path),
        )
        fit(
            cfg,
            FitData(data, feats, lambda m: {"avg": 0.0}),
            build_model(backbone, cfg.model, device="cpu"),
            backbone,
            MiningConfig(),
            runtime=RuntimeConfig(device="cpu"),
        )


def test_training_improves_the_training_objective(backbone: Backbone) -> None:
    result = run_fit(backbone, None, objective="contrastive", negatives="none", use_margins=False)
    losses = [h["train/loss"] for h in result.history]
    assert losses[-1] < losses[0]


def test_models_from_one_backbone_do_not_share_weights(backbone: Backbone) -> None:
    a, b = (
        build_model(backbone, DQEConfig(), device="cpu"),
        build_model(backbone, DQEConfig(), device="cpu"),
    )
    with torch.no_grad():
        a.qformer.layernorm.weight.add_(1.0)
    assert not torch.equal(a.qformer.layernorm.weight, b.qformer.layernorm.weight)
    assert not torch.equal(a.qformer.layernorm.weight, backbone.model.qformer.layernorm.weight)


def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    fn = lr_lambda(warmup_steps=4, total_steps=14, min_ratio=0.01)
    assert [fn(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert fn(4) == pytest.approx(1.0)
    assert fn(9) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert fn(14) == pytest.approx(0.01) and fn(100) == pytest.approx(0.01)


def test_random_negatives_avoid_target_reference_and_other_groups() -> None:
    data, _, _ = make_data(n_pool=12, n_query=200)
    data.pool_groups = np.arange(12) % 2
    data.query_groups = data.pool_groups[data.target_idx]
    data.reference_idx = np.where(
        data.pool_groups[data.reference_idx] == data.query_groups, data.reference_idx, -1
    )
    neg = random_negatives(data, np.random.default_rng(0))
    assert (neg != data.target_idx).all() and (neg != data.reference_idx).all()
    assert (data.pool_groups[neg] == data.query_groups).all()


def test_mining_state_round_trips_through_weights_only(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(10, 8, generator=g), dim=-1)
    pool = torch.nn.functional.normalize(torch.randn(30, 3, 8, generator=g), dim=-1)
    result = mine_negatives(
        q,
        pool,
        torch.arange(10),
        torch.arange(10, 20),
        MiningConfig(zone_quantile=0.3, epsilon=0.0),
    )
    torch.save(result.to_state(), tmp_path / "m.pt")
    back = MiningResult.from_state(torch.load(tmp_path / "m.pt", weights_only=True))
    for name in ("candidates", "deltas", "zone_size", "fallback"):
        np.testing.assert_array_equal(getattr(result, name), getattr(back, name))
    assert back.strategy == result.strategy


def test_train_config_rejects_unknown_keys_wrong_types_and_bad_combinations() -> None:
    with pytest.raises(ValueError, match="epochz"):
        TrainingConfig(loop={"epochz": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epochs"):
        LoopConfig(epochs="three")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a negative"):
        TrainingConfig(loss={"objective": "pairwise_kl"}, loop={"negatives": "none"})  # type: ignore[arg-type]


def test_eval_set_from_tables_selects_split() -> None:
    triplets = pd.DataFrame(
        {
            "query_id": ["1", "2"],
            "dataset": ["synthetic"] * 2,
            "category": ["all"] * 2,
            "split": ["val", "train"],
            "reference_id": ["a", "b"],
            "target_id": ["b", "a"],
            "captions_raw": [["x"], ["y"]],
            "caption_eval": ["x", "y"],
            "captions_train": [["x"], ["y"]],
            "edit_type": ["color", "shape"],
            "edits_color": [True, False],
            "edits_shape": [False, True],
            "subset_members": [["a", "b"], ["a", "b"]],
            "edit_labels": ["{}", "{}"],
        }
    )
    images = pd.DataFrame(
        {"image_id": ["a", "b", "a"], "category": ["all"] * 3, "split": ["val", "val", "train"]}
    )
    ev = EvalSet.from_tables(triplets, images, "val")
    assert ev.query_ids == ["1"] and ev.gallery_ids == ["a", "b"] and ev.labelled
    with pytest.raises(ValueError, match="no triplets"):
        EvalSet.from_tables(triplets, images, "test1")


def test_prefetch_gathers_one_batch_ahead_on_a_worker_thread() -> None:
    import threading

    from dqe_cir_pipeline.model.data import prefetched, to_device

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[str, list[str]]] = []

        def get(self, ids: list[str]) -> np.ndarray:
            self.calls.append((threading.current_thread().name, list(ids)))
            return np.stack([np.full((2, 3), float(i[1:]), dtype=np.float16) for i in ids])

    src = Recording()
    batches = [[[f"i{k}", f"i{k + 1}"], [f"i{k + 2}"]] for k in range(0, 30, 10)]
    seen = []
    for k, host in enumerate(prefetched(src, batches, pin=False)):
        assert len(src.calls) <= 2 * (k + 2)  # never more than one batch ahead
        seen.append([t.dtype for t in host])
        dev = to_device(host[0], torch.device("cpu"))
        assert dev.dtype == torch.float32 and dev[1, 0, 0].item() == float(batches[k][0][1][1:])
    assert seen == [[torch.float16, torch.float16]] * 3
    assert [ids for _, ids in src.calls] == [ids for b in batches for ids in b]  # in order
    assert all(name.startswith("token-prefetch") for name, _ in src.calls)
    assert list(prefetched(src, [], pin=False)) == []


def test_a_query_without_any_negative_candidate_is_an_error_not_the_last_image() -> None:
    data, _, _ = make_data(n_pool=12, n_query=4)
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=-1)
    pool = torch.nn.functional.normalize(torch.randn(12, 3, 8, generator=g), dim=-1)
    target = torch.as_tensor(data.target_idx)
    reference = torch.as_tensor(data.reference_idx)
    # query 2 alone in its group with only its target and reference: an empty pool
    groups_p = np.zeros(12, dtype=np.int64)
    groups_p[[data.target_idx[2], data.reference_idx[2]]] = 1
    groups_q = np.zeros(4, dtype=np.int64)
    groups_q[2] = 1
    keep = [i for i in range(4) if i == 2 or groups_p[data.target_idx[i]] == 0]
    result = mine_negatives(
        q[keep],
        pool,
        target[keep],
        reference[keep],
        MiningConfig(zone_quantile=0.5),
        query_groups=groups_q[keep],
        pool_groups=groups_p,
    )
    assert (sample_negatives(result, np.random.default_rng(0)) < 0).any()  # the raw draw
    sub = make_data(n_pool=12, n_query=4)[0]
    sub.query_ids = [data.query_ids[i] for i in keep]
    with pytest.raises(ValueError, match="no negative candidate"):
        zone_negatives(result, sub, np.random.default_rng(0))
