"""Small helpers shared by the nodes: parameters -> typed configs, tables -> model inputs.

Kept free of Kedro and MLflow so notebooks and benchmarks can use them too.
"""

from __future__ import annotations

import logging
from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.data_sources.synthetic import pixel_embeddings
from dqe_cir_pipeline.model.backbone import Backbone, BackboneConfig, load_backbone
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.dqe import DQECIR, DQEConfig
from dqe_cir_pipeline.model.engine import TrainConfig, TrainData
from dqe_cir_pipeline.model.evaluate import EvalOutput, EvalSet, evaluate_embeddings
from dqe_cir_pipeline.model.losses import DQELoss, LossConfig
from dqe_cir_pipeline.model.negatives import FALLBACK_NAMES, MiningConfig, MiningResult

logger = logging.getLogger(__name__)


def train_captions(triplets: pd.DataFrame) -> list[str]:
    """Every training caption form (the tiny tokenizer's training corpus)."""
    train = triplets[triplets["split"] == "train"]
    return [text for forms in train["captions_train"] for text in forms] + train["caption_eval"].tolist()


def backbone_from_params(backbone: dict[str, Any], triplets: pd.DataFrame | None = None) -> Backbone:
    """Load (or, for the tiny preset, build once) the backbone the parameters describe."""
    cfg = BackboneConfig.from_dict(backbone)
    captions = train_captions(triplets) if triplets is not None and cfg.source == "tiny" else None
    return load_backbone(cfg, captions)


def train_config(training: dict[str, Any], runtime: dict[str, Any], backbone: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(
        training, device=runtime.get("device", "auto"), max_text_len=int(backbone.get("max_text_len", 32))
    )


def mining_config(mining: dict[str, Any]) -> MiningConfig:
    known = {f.name for f in fields(MiningConfig)}
    unknown = set(mining) - known
    if unknown:
        raise ValueError(f"unknown mining parameters: {sorted(unknown)}")
    return MiningConfig(**mining)


def build_model(backbone: Backbone, cfg: TrainConfig) -> DQECIR:
    """The DQE-CIR module on the backbone's Q-Former; seeded so heads init reproducibly."""
    torch.manual_seed(cfg.seed)
    model = DQECIR(
        backbone.model,
        DQEConfig(use_attribute_weights=cfg.use_attribute_weights, base_weight_init=cfg.base_weight_init),
    )
    return model.to(resolve_device(cfg.device))


def build_loss(cfg: TrainConfig) -> DQELoss:
    return DQELoss(
        LossConfig(
            objective=cfg.objective,
            use_margins=cfg.use_margins,
            margin=cfg.margin,
            lambda_color=cfg.lambda_color,
            lambda_shape=cfg.lambda_shape,
        )
    )


def build_train_data(triplets: pd.DataFrame, images: pd.DataFrame, split: str = "train") -> TrainData:
    """Training queries of ``split`` and their negative pool (the split's images).

    The pool is per category for FashionIQ (METHOD §4: same-category images) and one
    pool otherwise. Triplets whose target or reference is missing from the pool are an
    error (ingestion quarantines those, so reaching here means the tables disagree).
    """
    q = triplets[(triplets["split"] == split) & triplets["target_id"].notna()].reset_index(drop=True)
    if q.empty:
        raise ValueError(f"no labelled triplets in split {split!r}")
    pool = images[images["split"] == split].drop_duplicates(["image_id", "category"]).reset_index(drop=True)
    per_category = bool((q["dataset"] == "fashioniq").all())
    keys = list(zip(pool["image_id"], pool["category"] if per_category else [""] * len(pool), strict=True))
    pos = {k: i for i, k in enumerate(keys)}

    def lookup(ids: pd.Series, cats: pd.Series, role: str, required: bool) -> np.ndarray:
        out = np.empty(len(ids), dtype=np.int64)
        for i, (image_id, cat) in enumerate(zip(ids, cats, strict=True)):
            key = (image_id, cat if per_category else "")
            if key not in pos:
                if required:
                    raise KeyError(f"query {q['query_id'][i]}: {role} {image_id!r} is not in the {split} images")
                out[i] = -1
            else:
                out[i] = pos[key]
        return out

    groups_q = groups_p = None
    if per_category:
        codes = {c: i for i, c in enumerate(sorted(set(pool["category"])))}
        groups_q = q["category"].map(codes).to_numpy(dtype=np.int64)
        groups_p = pool["category"].map(codes).to_numpy(dtype=np.int64)
    return TrainData(
        query_ids=q["query_id"].astype(str).tolist(),
        reference_ids=q["reference_id"].astype(str).tolist(),
        target_ids=q["target_id"].astype(str).tolist(),
        captions_train=[list(f) if len(f) else [c] for f, c in zip(q["captions_train"], q["caption_eval"], strict=True)],
        caption_eval=q["caption_eval"].astype(str).tolist(),
        edits_color=q["edits_color"].to_numpy(dtype=bool),
        edits_shape=q["edits_shape"].to_numpy(dtype=bool),
        pool_ids=pool["image_id"].astype(str).tolist(),
        target_idx=lookup(q["target_id"], q["category"], "target", True),
        reference_idx=lookup(q["reference_id"], q["category"], "reference", False),
        query_groups=groups_q,
        pool_groups=groups_p,
    )


def mlflow_metrics(values: dict[str, float], step: int = 0, prefix: str = "") -> dict[str, dict[str, float]]:
    """Format a flat dict for ``MlflowMetricsHistoryDataset`` (MLflow forbids ``@``)."""
    out = {}
    for k, v in values.items():
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        out[(prefix + k).replace("@", "_at_")] = {"value": float(v), "step": int(step)}
    return out


def mlflow_history(records: list[dict[str, float]], prefix: str = "") -> dict[str, list[dict[str, float]]]:
    """Per-epoch records -> one metric history per key (step = epoch)."""
    out: dict[str, list[dict[str, float]]] = {}
    for rec in records:
        step = int(rec["epoch"])
        for k, v in rec.items():
            if k == "epoch" or v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            out.setdefault((prefix + k).replace("@", "_at_"), []).append({"value": float(v), "step": step})
    return out


def mining_table(result: MiningResult, data: TrainData) -> pd.DataFrame:
    """One row per training query: its mid-zone candidates (ids, pool index, Delta) and bounds."""
    cands = [[int(j) for j in row if j >= 0] for row in result.candidates]
    return pd.DataFrame(
        {
            "query_id": data.query_ids,
            "reference_id": data.reference_ids,
            "target_id": data.target_ids,
            "candidate_ids": [[data.pool_ids[j] for j in row] for row in cands],
            "candidate_idx": cands,
            "deltas": [[float(d) for d in row[: len(c)]] for row, c in zip(result.deltas, cands, strict=True)],
            "zone_size": result.zone_size,
            "lower": result.lower,
            "upper": result.upper,
            "pool_size": result.pool_size,
            "fallback": result.fallback_labels().astype(str),
            "widenings": result.widenings.astype(np.int64),
            "strategy": result.strategy,
        }
    )


def mining_from_table(table: pd.DataFrame, data: TrainData, mining: MiningConfig) -> MiningResult:
    """Rebuild a mining result from ``mining_table`` output, checking it is not stale."""
    if table["query_id"].astype(str).tolist() != data.query_ids:
        raise ValueError(
            "initial_negatives does not match the training triplets (different queries or order): "
            "re-run the negative_mining pipeline"
        )
    n, width = len(table), mining.max_zone
    candidates = np.full((n, width), -1, dtype=np.int64)
    deltas = np.full((n, width), np.nan, dtype=np.float32)
    for i, (idx, ids, ds) in enumerate(zip(table["candidate_idx"], table["candidate_ids"], table["deltas"], strict=True)):
        idx = [int(j) for j in idx][:width]
        for j, name in zip(idx, ids, strict=False):
            if j >= len(data.pool_ids) or data.pool_ids[j] != name:
                raise ValueError(f"initial_negatives row {i}: candidate {name!r} is not pool item {j}; re-run negative_mining")
        candidates[i, : len(idx)] = idx
        deltas[i, : len(idx)] = np.asarray(ds, dtype=np.float32)[: len(idx)]
    codes = {name: c for c, name in enumerate(FALLBACK_NAMES)}
    return MiningResult(
        candidates=candidates,
        deltas=deltas,
        zone_size=table["zone_size"].to_numpy(dtype=np.int64),
        lower=table["lower"].to_numpy(dtype=np.float32),
        upper=table["upper"].to_numpy(dtype=np.float32),
        pool_size=table["pool_size"].to_numpy(dtype=np.int64),
        fallback=np.asarray([codes[f] for f in table["fallback"]], dtype=np.int8),
        widenings=table["widenings"].to_numpy(dtype=np.int8),
        strategy=str(table["strategy"].iloc[0]) if n else mining.strategy,
    )


def text_blind_baseline(images: pd.DataFrame, data: EvalSet, ks: tuple[int, ...]) -> EvalOutput:
    """Rank the gallery by pixel similarity to the reference, ignoring the text.

    The floor every result is reported against: a model that does not beat it has not
    learned to use the modification text.
    """
    paths = images.drop_duplicates("image_id").set_index("image_id")["path"]
    gallery = torch.from_numpy(pixel_embeddings([paths[i] for i in data.gallery_ids]))
    pos = {n: i for i, n in enumerate(data.gallery_ids)}
    if all(r in pos for r in data.reference_ids):
        queries = gallery[[pos[r] for r in data.reference_ids]]
    else:  # FashionIQ: a reference may live outside its category's gallery
        queries = torch.from_numpy(pixel_embeddings([paths[r] for r in data.reference_ids]))
    return evaluate_embeddings(queries, None, gallery.unsqueeze(1), data, ks=ks)
