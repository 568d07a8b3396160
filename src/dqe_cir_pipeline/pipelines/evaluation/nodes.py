"""Nodes of the ``evaluation``, ``zero_shot`` and ``cirr_submission`` pipelines.

Every evaluation reports three rows side by side: the trained model, the same backbone
with no training (zero-shot) and a text-blind baseline (the reference's nearest
neighbours in pixel space), so a number is never read without its floor. On a split where
some query has several valid targets every row also carries ``recall_any@K`` and
``map@K``, and the rankings the per-query columns a paired bootstrap reads.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from dqe_cir_pipeline.baselines import text_blind_baseline
from dqe_cir_pipeline.data_sources.common import dataset_fingerprint
from dqe_cir_pipeline.data_sources.registry import benchmark
from dqe_cir_pipeline.datasets.feature_cache import FeatureCache
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.model.cirr_submission import cirr_submission, validate_cirr_submission
from dqe_cir_pipeline.model.config import RuntimeConfig
from dqe_cir_pipeline.model.encode import encode_images, encode_queries
from dqe_cir_pipeline.model.evaluate import (
    MAP_KS,
    EvalOutput,
    EvalSet,
    EvaluationConfig,
    evaluate_split,
    submission_rankings,
)
from dqe_cir_pipeline.model.factory import (
    build_model,
    build_untrained_model,
    checkpoint_seed,
    model_from_checkpoint,
)
from dqe_cir_pipeline.model.state import CheckpointMismatchError
from dqe_cir_pipeline.model.train_config import TrainingConfig
from dqe_cir_pipeline.tracking import metric_values

logger = logging.getLogger(__name__)


def _report(
    outputs: dict[str, EvalOutput], data: EvalSet, backbone_name: str
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Metrics table, JSON summary and MLflow metrics for the evaluated rows."""
    table = pd.DataFrame(
        [
            {"model": name, "metric": k, "value": float(v)}
            for name, out in outputs.items()
            for k, v in out.metrics.items()
        ]
    )
    table["split"] = data.split
    table["dataset"] = data.dataset
    table["backbone"] = backbone_name
    summary = {
        "dataset": data.dataset,
        "split": data.split,
        "backbone": backbone_name,
        "queries": len(data.query_ids),
        "gallery": len(data.gallery_ids),
        "models": {
            name: dict(zip(g["metric"], g["value"], strict=True))
            for name, g in table.groupby("model")
        },
    }
    if data.labelled and data.multi_target:
        summary["valid_targets"] = _valid_target_stats(data)
    metrics: dict[str, Any] = {}
    for name, out in outputs.items():
        metrics.update(metric_values(out.metrics, prefix=f"eval/{name}."))
    main = next(iter(outputs.values()))
    # the headline (the evaluated model's overall figures: avg, recall@K, recall_subset@K;
    # not the per-edit-type or weight breakdowns) also without a group: short names for
    # the runs table's columns and run comparisons (the charts open on the eval/ group)
    headline_keys = [k for k in main.metrics if "/" not in k and "." not in k]
    metrics.update(metric_values({k: main.metrics[k] for k in headline_keys}))
    logger.info(
        "%s, reported split %s: %s",
        data.dataset,
        data.split,
        {k: round(v, 2) for k, v in main.metrics.items() if "/" not in k},
    )
    return table, summary, metrics


def _valid_target_stats(data: EvalSet) -> dict[str, float]:
    """How many valid targets the reported split's queries have."""
    counts = np.asarray([len(v) for v in data.valid_lists()], dtype=np.float64)
    return {
        "mean": float(counts.mean()),
        "max": float(counts.max()),
        "share_multiple": float((counts > 1).mean()),
    }


def _rankings(outputs: dict[str, EvalOutput], data: EvalSet, seed: int) -> pd.DataFrame:
    """The trained model's per-query rankings, with the baselines' ranks beside them.

    ``seed``: the checkpoint's training seed, so rankings of several runs stack into the
    (seed, query) table a paired bootstrap resamples. Multi-target splits add each
    baseline's ``<name>_rank_any`` and ``<name>_ap@K`` too.
    """
    per_query = outputs["dqe_cir"].per_query.copy()
    per_query["reference_id"] = data.reference_ids
    per_query["target_id"] = data.target_ids
    per_query["text"] = data.texts
    for name in ("zero_shot", "untrained", "text_blind"):
        per_query[f"{name}_rank"] = outputs[name].per_query["rank"].to_numpy()
    for name in ("zero_shot", "untrained", "text_blind"):
        theirs = outputs[name].per_query
        for col in ("rank_any", *(f"ap@{k}" for k in MAP_KS)):
            if col in theirs:
                per_query[f"{name}_{col}"] = theirs[col].to_numpy()
    per_query["seed"] = seed
    return per_query


def evaluate_checkpoint(
    model_checkpoint: dict[str, Any],
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: BackboneConfig,
    evaluation: EvaluationConfig,
    runtime: RuntimeConfig,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any], pd.DataFrame]:
    """Evaluate a trained checkpoint next to zero-shot and the text-blind baseline.

    Returns:
        The metrics table, a JSON summary, MLflow metrics and the per-query rankings.
    """
    bb = load_backbone(backbone)
    _check_same_data(model_checkpoint, images, triplets)
    model = model_from_checkpoint(model_checkpoint, bb, runtime.device)
    seed = checkpoint_seed(model_checkpoint)
    zero_shot = build_model(bb, model.cfg, seed, runtime.device)
    untrained = build_untrained_model(bb, model.cfg, seed, runtime.device)
    data = EvalSet.from_tables(triplets, images, evaluation.split)
    protocol = benchmark(data.dataset).protocol
    outputs = {
        name: evaluate_split(m, bb, vit_features, data, evaluation, runtime, protocol)
        for name, m in (("dqe_cir", model), ("zero_shot", zero_shot), ("untrained", untrained))
    }
    outputs["text_blind"] = text_blind_baseline(images, data, evaluation.ks)
    return (*_report(outputs, data, bb.name), _rankings(outputs, data, seed))


def _check_same_data(
    checkpoint: dict[str, Any], images: pd.DataFrame, triplets: pd.DataFrame
) -> None:
    """Refuse to report a checkpoint trained on other data than the tables evaluated."""
    trained_on = checkpoint.get("data", {}).get("fingerprint")
    current = dataset_fingerprint(images, triplets)
    if trained_on != current:
        raise CheckpointMismatchError(
            f"the checkpoint was trained on data {trained_on!r}, the ingested data is {current!r}: "
            "run `kedro run --pipelines=train` to train on the current data"
        )


def evaluate_zero_shot(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: BackboneConfig,
    training: TrainingConfig,
    evaluation: EvaluationConfig,
    runtime: RuntimeConfig,
) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """Evaluate the backbone with no CIR training (beside the untrained and text-blind floors)."""
    bb = load_backbone(backbone)
    data = EvalSet.from_tables(triplets, images, evaluation.split)
    seed = training.loop.seed
    zero_shot = build_model(bb, training.model, seed, runtime.device)
    untrained = build_untrained_model(bb, training.model, seed, runtime.device)
    protocol = benchmark(data.dataset).protocol
    outputs = {
        name: evaluate_split(m, bb, vit_features, data, evaluation, runtime, protocol)
        for name, m in (("zero_shot", zero_shot), ("untrained", untrained))
    }
    outputs["text_blind"] = text_blind_baseline(images, data, evaluation.ks)
    return _report(outputs, data, bb.name)


def write_cirr_submission(
    model_checkpoint: dict[str, Any],
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: BackboneConfig,
    evaluation: EvaluationConfig,
    runtime: RuntimeConfig,
) -> tuple[dict[str, object], dict[str, object]]:
    """The two files the CIRR evaluation server takes, validated before they are written.

    ``recall``: top-50 of the split's gallery with the reference removed;
    ``recall_subset``: top-3 of ``img_set.members`` minus the reference; both with
    ``"version": "rc2"``, keyed by ``str(pairid)``.
    """
    bb = load_backbone(backbone)
    _check_same_data(model_checkpoint, images, triplets)
    model = model_from_checkpoint(model_checkpoint, bb, runtime.device)
    data = EvalSet.from_tables(triplets, images, evaluation.submission_split)
    gallery = encode_images(model, vit_features, data.gallery_ids, amp_dtype=runtime.amp_dtype)
    q = encode_queries(
        model,
        vit_features,
        bb.tokenizer,
        data.reference_ids,
        data.texts,
        max_len=bb.max_text_len,
        amp_dtype=runtime.amp_dtype,
    ).q
    full, subset = submission_rankings(q, gallery, data, evaluation.chunk_size)
    pair_ids = [int(p) for p in data.query_ids]
    recall_json, subset_json = cirr_submission(pair_ids, full, subset)
    validate_cirr_submission(
        recall_json,
        subset_json,
        pair_ids,
        references=dict(zip(pair_ids, data.reference_ids, strict=True)),
        members=dict(zip(pair_ids, data.subset_members, strict=True)),
    )
    logger.info("CIRR submission for %d pairs of %s", len(pair_ids), data.split)
    return recall_json, subset_json
