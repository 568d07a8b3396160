"""The pipelines on a tiny ambiguous-tier benchmark (several valid targets per query):
ingestion keeps every valid target, mining and training log the false-negative rate, and
the evaluation's multi-target metrics equal a direct computation from the embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from kedro.runner import SequentialRunner

from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.model.backbone import load_backbone
from dqe_cir_pipeline.model.encode import encode_images, encode_queries
from dqe_cir_pipeline.model.evaluate import MAP_KS, EvalSet
from dqe_cir_pipeline.model.factory import checkpoint_seed, model_from_checkpoint
from dqe_cir_pipeline.pipeline_registry import register_pipelines
from tests.pipelines.conftest import catalog_for

pytestmark = pytest.mark.slow

MODELS = ("dqe_cir", "zero_shot", "untrained", "text_blind")
KS = (1, 5, 10, 50)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The ``synthetic_ambiguous`` environment at test size, trained for two epochs."""
    tmp = tmp_path_factory.mktemp("ambiguous")
    overrides = {
        "data": {
            "synthetic": {
                "root": str(tmp / "benchmark"),
                "train_families": 8,
                "val_families": 3,
                "test_families": 4,
            }
        },
        "backbone": {"tiny_dir": str(tmp / "tiny_backbone")},
        "extraction": {"batch_size": 32, "shard_size": 64},
        "training": {
            "optim": {"warmup_steps": 2},
            "loop": {
                "run_dir": str(tmp / "run"),
                "epochs": 2,
                "batch_size": 8,
                "refresh_interval": 1,
            },
        },
        "evaluation": {"qualitative_queries": 2, "qualitative_topk": 3},
        "runtime": {"device": "cpu"},
    }
    params = project_config_loader("synthetic_ambiguous", runtime_params=overrides)["parameters"]
    catalog = catalog_for(params, tmp)
    pipes = register_pipelines()
    stages = ("data_ingestion", "embedding_extraction", "negative_mining", "training", "evaluation")
    SequentialRunner().run(sum((pipes[s] for s in stages[1:]), pipes[stages[0]]), catalog)
    return {"catalog": catalog, "params": params}


def test_ingestion_keeps_every_valid_target(ran: dict[str, Any]) -> None:
    triplets = ran["catalog"].load("triplets")
    assert (triplets["valid_targets"].map(len) > 1).any()
    assert all(
        t in v for t, v in zip(triplets["target_id"], triplets["valid_targets"], strict=True)
    )


def test_mining_and_training_log_the_false_negative_rate(ran: dict[str, Any]) -> None:
    cat = ran["catalog"]
    initial = cat.load("mining_metrics")["mining/initial.false_negative_rate"]["value"]
    assert 0.0 <= initial <= 1.0
    refreshes = cat.load("training_metrics")["mining/refresh.false_negative_rate"]
    assert refreshes and all(0.0 <= p["value"] <= 1.0 for p in refreshes)
    history = cat.load("training_history")
    assert history["train/negatives/false_negative_rate"].between(0.0, 1.0).all()


def _direct(cat: Any, data: EvalSet) -> tuple[np.ndarray, np.ndarray]:
    """The trained model's best valid-target place and AP@K per query, from a full sort."""
    bb = load_backbone(cat.load("params:backbone"))
    model = model_from_checkpoint(cat.load("model_checkpoint"), bb, "cpu")
    feats = cat.load("vit_features")
    gallery = encode_images(model, feats, data.gallery_ids)
    q = encode_queries(
        model, feats, bb.tokenizer, data.reference_ids, data.texts, max_len=bb.max_text_len
    ).q
    scores = torch.einsum("np,mqp->nmq", q.double(), gallery.double()).amax(-1)
    best = np.empty(len(q), dtype=np.int64)
    ap = np.empty((len(q), len(MAP_KS)))
    for i, wanted in enumerate(data.valid_targets):
        order = [data.gallery_ids[j] for j in torch.argsort(scores[i], descending=True).tolist()]
        rel = np.asarray([n in wanted for n in order if n != data.reference_ids[i]], dtype=float)
        best[i] = int(np.flatnonzero(rel)[0])
        for c, k in enumerate(MAP_KS):
            precision = np.cumsum(rel[:k]) / np.arange(1, min(k, len(rel)) + 1)
            ap[i, c] = float((precision * rel[:k]).sum()) / min(k, len(wanted))
    return best, ap


def test_evaluation_reports_multi_target_metrics(ran: dict[str, Any]) -> None:
    cat = ran["catalog"]
    summary = cat.load("evaluation_summary")
    for name in MODELS:
        got = summary["models"][name]
        assert {f"map@{k}" for k in MAP_KS} | {f"recall_any@{k}" for k in KS} <= set(got)
        assert "recall@1" in got and "avg" in got  # the single-target protocol stays
    assert summary["valid_targets"]["share_multiple"] > 0
    metrics = cat.load("evaluation_metrics")
    assert "eval/dqe_cir.map_at_10" in metrics and "eval/text_blind.recall_any_at_5" in metrics
    table = cat.load("evaluation_table")
    assert set(table.loc[table["metric"] == "map@50", "model"]) == set(MODELS)

    ranks = cat.load("query_rankings")
    data = EvalSet.from_tables(cat.load("triplets"), cat.load("images"), "test")
    best, ap = _direct(cat, data)
    assert ranks["rank_any"].tolist() == best.tolist()
    assert ranks["n_valid"].tolist() == [len(v) for v in data.valid_targets]
    assert (ranks["seed"] == checkpoint_seed(cat.load("model_checkpoint"))).all()
    dqe = summary["models"]["dqe_cir"]
    for c, k in enumerate(MAP_KS):
        np.testing.assert_allclose(ranks[f"ap@{k}"], ap[:, c], atol=1e-9)
        assert dqe[f"map@{k}"] == pytest.approx(100 * ap[:, c].mean())
    for k in KS:
        assert dqe[f"recall_any@{k}"] == pytest.approx(100 * np.mean(best < k))
    for name in ("zero_shot", "untrained", "text_blind"):
        hits = ranks[f"{name}_rank_any"] < 10
        assert summary["models"][name]["recall_any@10"] == pytest.approx(100 * hits.mean())
        mean_ap = 100 * ranks[f"{name}_ap@25"].mean()
        assert summary["models"][name]["map@25"] == pytest.approx(mean_ap)
