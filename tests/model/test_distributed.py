"""Data-parallel training under ``torchrun`` (gloo, two CPU processes).

The claim: one DistributedDataParallel step on W ranks equals one step of the same
global batch in one process, so a torchrun job reproduces a single-GPU run. Each
objective is checked end to end (mined negatives, refreshes, validation, best-epoch
selection) with an uneven split of the global batch (5 + 4 rows).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.tiny_training import run_fit, tiny_backbone

from dqe_cir_pipeline.model.distributed import Distributed
from dqe_cir_pipeline.model.losses import LOSS_TERMS, DQELoss, EncodedBatch, GlobalBatch, LossConfig

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "helpers" / "ddp_worker.py"
RECIPE = {"n_query": 29, "batch_size": 9, "epochs": 2}  # batches 9, 9, 9, 2: split 5+4 and 1+1


def torchrun(
    args: list[str], nproc: int = 2, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        {"objective": "batch_kl"},
        {"objective": "contrastive", "negatives": "none"},
        # the plain QuRe ablation: the attribute heads take no part (DDP must allow that)
        {
            "objective": "pairwise_kl",
            "negatives": "random",
            "use_attribute_weights": False,
            "use_margins": False,
        },
    ],
    ids=["batch_kl-mined", "contrastive", "pairwise_kl-random-no-heads"],
)
def test_two_ranks_train_exactly_like_one_process(
    tmp_path: Path, overrides: dict[str, str]
) -> None:
    torch.set_num_threads(1)
    backbone_dir = tmp_path / "tiny"
    backbone = tiny_backbone(backbone_dir)
    single = run_fit(backbone, None, no_dropout=True, **RECIPE, **overrides)

    out = tmp_path / "ddp.pt"
    torchrun([str(WORKER), str(backbone_dir), str(out), json.dumps({**RECIPE, **overrides})])
    ddp = torch.load(out, weights_only=False)

    assert len(ddp["history"]) == len(single.history) == RECIPE["epochs"]
    for a, b in zip(single.history, ddp["history"], strict=True):
        for key in [f"train/{term}" for term in LOSS_TERMS if term != "weight_order"] + [
            "train/lr"
        ]:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
        val = [k for k in a if k.startswith("val/")]
        assert val and not [k for k in val if b[k] != pytest.approx(a[k], rel=1e-4, abs=1e-5)], [
            (k, a[k], b[k]) for k in val if b[k] != pytest.approx(a[k], rel=1e-4, abs=1e-5)
        ]
    # Both runs moved the weights the same way. Adam rescales near-zero gradients (the
    # cross-attention key bias has a true gradient of zero), so float summation noise can
    # show at the learning-rate scale on single elements; the whole update must agree.
    initial = run_fit(
        backbone, None, no_dropout=True, **{**RECIPE, **overrides, "epochs": 1, "lr": 0.0}
    )
    start, end, other = (
        initial.best_checkpoint["model"],
        single.best_checkpoint["model"],
        ddp["model"],
    )
    moved = sum(float((end[k].float() - start[k].float()).norm() ** 2) for k in end) ** 0.5
    apart = sum(float((other[k].float() - end[k].float()).norm() ** 2) for k in end) ** 0.5
    assert moved > 0.05
    assert apart < 0.01 * moved, (apart, moved)
    for k, v in end.items():
        torch.testing.assert_close(other[k], v, rtol=1e-3, atol=2e-4)


def test_global_batch_loss_equals_local_loss_on_one_process() -> None:
    """Single-process path: passing the batch as its own GlobalBatch changes nothing."""

    from dqe_cir_pipeline.model.dqe import DQEConfig

    class Scorer(torch.nn.Module):
        cfg = DQEConfig()  # attribute weights on: the weight-order term is compared too

        def temperature(self) -> torch.Tensor:
            return torch.tensor(0.1)

        @staticmethod
        def score(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return (q[:, None, None, :] * t[None]).sum(-1).amax(-1)

        @staticmethod
        def pair_score(q: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return (q[:, None, :] * t).sum(-1).amax(-1)

    from dqe_cir_pipeline.model.dqe import QueryOutput

    g = torch.Generator().manual_seed(0)
    b, qn, p = 6, 3, 8
    out = QueryOutput(
        *(torch.randn(b, p, generator=g) for _ in range(4)), weights=torch.rand(b, 3, generator=g)
    )
    tgt, neg = torch.randn(b, qn, p, generator=g), torch.randn(b, qn, p, generator=g)
    color = torch.tensor([1, 0, 1, 0, 0, 1], dtype=torch.bool)
    shape = ~color
    ti, ni = torch.tensor([0, 1, 2, 3, 0, 5]), torch.tensor([4, 5, 6, 7, 8, 9])
    for objective in ("batch_kl", "pairwise_kl", "contrastive"):
        loss = DQELoss(LossConfig(objective=objective))
        whole = EncodedBatch(out, tgt, color, shape, neg, ti, ni)
        a = loss(Scorer(), whole).as_dict()
        c = loss(Scorer(), replace(whole, global_batch=GlobalBatch.local(whole))).as_dict()
        for key in a:
            torch.testing.assert_close(a[key], c[key])
        # two halves, as two ranks would see them, average to the whole-batch terms
        halves = []
        for offset, rows in ((0, slice(0, 4)), (4, slice(4, 6))):
            sub = QueryOutput(
                *(getattr(out, f)[rows] for f in ("q", "q_base", "q_color", "q_shape", "weights"))
            )
            gb = GlobalBatch(
                tgt,
                neg,
                ti,
                ni,
                offset=offset,
                n_color=int(color.sum()),
                n_shape=int(shape.sum()),
                world_size=2,
            )
            part = EncodedBatch(
                sub, tgt[rows], color[rows], shape[rows], neg[rows], ti[rows], ni[rows]
            )
            halves.append(loss(Scorer(), replace(part, global_batch=gb)).as_dict())
        for key in a:
            torch.testing.assert_close(
                (halves[0][key] + halves[1][key]) / 2, a[key], msg=f"{objective} {key}"
            )


def test_from_env_reads_the_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    d = Distributed.from_env()
    assert (d.rank, d.world_size, d.local_rank, d.enabled, d.is_main) == (3, 4, 1, True, False)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var)
    d = Distributed.from_env()
    assert (d.enabled, d.is_main) == (False, True)
    x = torch.arange(6.0).reshape(3, 2)
    assert d.broadcast({"a": 1}) == {"a": 1} and d.gather_rows(x, [3], differentiable=True) is x
    assert np.allclose(d.sum(x).numpy(), x.numpy())
