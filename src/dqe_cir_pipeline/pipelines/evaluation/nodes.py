"""Nodes of the ``evaluation`` pipeline.

Every evaluation reports three rows side by side: the trained model, the same backbone
with no training (zero-shot) and a text-blind baseline (the reference's nearest
neighbours in pixel space), so a number is never read without its floor.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache
from dqe_cir_pipeline.model.engine import TrainConfig, encode_images, encode_queries
from dqe_cir_pipeline.model.evaluate import EvalOutput, EvalSet, evaluate, submission_rankings
from dqe_cir_pipeline.model.retrieval import cirr_submission, validate_cirr_submission
from dqe_cir_pipeline.model.state import CheckpointMismatchError, load_trainable_state
from dqe_cir_pipeline.pipelines.common import (
    backbone_from_params,
    build_model,
    mlflow_metrics,
    text_blind_baseline,
    train_config,
)
from dqe_cir_pipeline.pipelines.evaluation import plots

logger = logging.getLogger(__name__)


def _model_from_checkpoint(checkpoint: dict[str, Any], backbone: dict[str, Any], runtime: dict[str, Any]):
    bb = backbone_from_params(backbone)
    saved_key = checkpoint.get("backbone", {}).get("key")
    if saved_key != bb.key:
        raise CheckpointMismatchError(
            f"checkpoint was trained on backbone {saved_key!r} "
            f"({checkpoint.get('backbone', {}).get('name')}), the configured backbone is {bb.key!r} ({bb.name})"
        )
    cfg = TrainConfig.from_dict(
        {k: v for k, v in checkpoint["config"].items() if k in TrainConfig.__dataclass_fields__},
        device=runtime.get("device", "auto"),
    )
    model = build_model(bb, cfg)
    load_trainable_state(model, checkpoint, bb.key, {})  # strict: a clear error on any mismatch
    return bb, model, cfg


def _rows(name: str, metrics: dict[str, float]) -> list[dict[str, Any]]:
    return [{"model": name, "metric": k, "value": float(v)} for k, v in metrics.items()]


def _report(
    model_out: EvalOutput | None,
    zero: EvalOutput,
    blind: EvalOutput,
    data: EvalSet,
    backbone_name: str,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Metrics table, JSON summary and MLflow metrics for the evaluated rows."""
    outputs = ([("dqe_cir", model_out)] if model_out is not None else []) + [("zero_shot", zero), ("text_blind", blind)]
    table = pd.DataFrame([row for name, out in outputs for row in _rows(name, out.metrics)])
    table["split"] = data.split
    table["dataset"] = data.dataset
    table["backbone"] = backbone_name
    summary = {
        "dataset": data.dataset,
        "split": data.split,
        "backbone": backbone_name,
        "queries": len(data.query_ids),
        "gallery": len(data.gallery_ids),
        "models": {name: dict(zip(g["metric"], g["value"], strict=True)) for name, g in table.groupby("model")},
    }
    metrics: dict[str, Any] = {}
    for name, out in outputs:
        metrics.update(mlflow_metrics(out.metrics, prefix=f"eval.{name}."))
    main = model_out or zero
    logger.info("%s %s: %s", data.dataset, data.split, {k: round(v, 2) for k, v in main.metrics.items() if "/" not in k})
    return table, summary, metrics


def _rankings_and_figures(
    trained: EvalOutput,
    zero: EvalOutput,
    blind: EvalOutput,
    table: pd.DataFrame,
    data: EvalSet,
    images: pd.DataFrame,
    evaluation: dict[str, Any],
) -> tuple[pd.DataFrame, Figure, Figure, Figure, Figure, Figure]:
    """Per-query rankings of the trained model, Recall@K / edit-type / weight plots and grids."""
    per_query = trained.per_query.copy()
    per_query["reference_id"] = data.reference_ids
    per_query["target_id"] = data.target_ids
    per_query["text"] = data.texts
    per_query["zero_shot_rank"] = zero.per_query["rank"].to_numpy()
    per_query["text_blind_rank"] = blind.per_query["rank"].to_numpy()
    paths = images.drop_duplicates("image_id").set_index("image_id")["path"].to_dict()
    n, k = int(evaluation["qualitative_queries"]), int(evaluation["qualitative_topk"])
    labelled = per_query[per_query["rank"] >= 0]
    rng = np.random.default_rng(0)
    good = labelled[labelled["rank"] < k]
    bad = labelled[labelled["rank"] >= k]
    good = good.iloc[rng.permutation(len(good))[:n]] if len(good) else good
    bad = bad.iloc[rng.permutation(len(bad))[:n]] if len(bad) else bad
    return (
        per_query,
        plots.recall_curves(table),
        plots.edit_type_bars(table),
        plots.attribute_weights(per_query),
        plots.qualitative_grid(good, paths, f"dqe_cir: successes (target in top {k})", k),
        plots.qualitative_grid(bad, paths, f"dqe_cir: failures (target not in top {k})", k),
    )


def _evaluate_kwargs(evaluation: dict[str, Any], cfg: Any) -> dict[str, Any]:
    """The ``evaluate`` settings shared by the trained and the untrained model."""
    return {
        "ks": tuple(int(k) for k in evaluation["ks"]),
        "chunk_size": int(evaluation["chunk_size"]),
        "max_len": cfg.max_text_len,
        "amp_dtype": cfg.amp_dtype,
    }


def evaluate_checkpoint(
    model_checkpoint: dict[str, Any],
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: dict[str, Any],
    evaluation: dict[str, Any],
    runtime: dict[str, Any],
):
    """Evaluate a trained checkpoint next to zero-shot and the text-blind baseline."""
    bb, model, cfg = _model_from_checkpoint(model_checkpoint, backbone, runtime)
    data = EvalSet.from_tables(triplets, images, evaluation["split"])
    common = _evaluate_kwargs(evaluation, cfg)
    trained = evaluate(model, vit_features, bb.tokenizer, data, **common)
    zero_model = build_model(bb, cfg)
    zero = evaluate(zero_model, vit_features, bb.tokenizer, data, **common)
    blind = text_blind_baseline(images, data, common["ks"])
    table, summary, metrics = _report(trained, zero, blind, data, bb.name)
    return (table, summary, metrics, *_rankings_and_figures(trained, zero, blind, table, data, images, evaluation))


def evaluate_zero_shot(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: dict[str, Any],
    training: dict[str, Any],
    evaluation: dict[str, Any],
    runtime: dict[str, Any],
):
    """Evaluate the backbone with no training at all (plus the text-blind baseline)."""
    cfg = train_config(training, runtime, backbone)
    bb = backbone_from_params(backbone)
    data = EvalSet.from_tables(triplets, images, evaluation["split"])
    common = _evaluate_kwargs(evaluation, cfg)
    zero = evaluate(build_model(bb, cfg), vit_features, bb.tokenizer, data, **common)
    blind = text_blind_baseline(images, data, common["ks"])
    return _report(None, zero, blind, data, bb.name)


def write_cirr_submission(
    model_checkpoint: dict[str, Any],
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: dict[str, Any],
    evaluation: dict[str, Any],
    runtime: dict[str, Any],
) -> tuple[dict[str, object], dict[str, object]]:
    """The two files the CIRR evaluation server takes, validated before they are written.

    ``recall``: top-50 of the split's gallery with the reference removed;
    ``recall_subset``: top-3 of ``img_set.members`` minus the reference; both with
    ``"version": "rc2"``, keyed by ``str(pairid)``.
    """
    bb, model, cfg = _model_from_checkpoint(model_checkpoint, backbone, runtime)
    data = EvalSet.from_tables(triplets, images, evaluation["submission_split"])
    gallery = encode_images(model, vit_features, data.gallery_ids, amp_dtype=cfg.amp_dtype)
    q = encode_queries(model, vit_features, bb.tokenizer, data.reference_ids, data.texts,
                       max_len=cfg.max_text_len, amp_dtype=cfg.amp_dtype).q
    full, subset = submission_rankings(q, gallery, data, int(evaluation["chunk_size"]))
    pair_ids = [int(p) for p in data.query_ids]
    recall_json, subset_json = cirr_submission(pair_ids, full, subset)
    validate_cirr_submission(
        recall_json, subset_json, pair_ids,
        references=dict(zip(pair_ids, data.reference_ids, strict=True)),
        members=dict(zip(pair_ids, data.subset_members, strict=True)),
    )
    logger.info("CIRR submission for %d pairs of %s", len(pair_ids), data.split)
    return recall_json, subset_json
