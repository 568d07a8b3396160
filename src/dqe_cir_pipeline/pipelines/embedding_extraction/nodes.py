"""Nodes of the ``embedding_extraction`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache, FeatureExtractionJob
from dqe_cir_pipeline.io_utils import stable_hash
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.engine import encode_images
from dqe_cir_pipeline.model.extract import VitEncoder
from dqe_cir_pipeline.pipelines.common import backbone_from_params, build_model, train_config

logger = logging.getLogger(__name__)


def prepare_backbone(triplets: pd.DataFrame, backbone: dict[str, Any]) -> dict[str, Any]:
    """Load the backbone (building the tiny preset and its tokenizer once) and describe it."""
    bb = backbone_from_params(backbone, triplets)
    vcfg = bb.model.config.vision_config
    qcfg = bb.model.config.qformer_config
    info = {
        "key": bb.key,
        "name": bb.name,
        "source": backbone["source"],
        "image_size": int(bb.preprocessor.image_size),
        "vision_hidden": int(vcfg.hidden_size),
        "vision_layers": int(vcfg.num_hidden_layers),
        "qformer_hidden": int(qcfg.hidden_size),
        "num_query_tokens": int(bb.model.config.num_query_tokens),
        "vocab_size": int(len(bb.tokenizer)),
        "preprocessing": bb.preprocessor.settings(),
    }
    logger.info("backbone %s (key %s)", info["name"], info["key"])
    return info


def extract_features(
    images: pd.DataFrame,
    backbone_info: dict[str, Any],
    backbone: dict[str, Any],
    extraction: dict[str, Any],
    runtime: dict[str, Any],
) -> FeatureExtractionJob:
    """Describe the extraction; the feature cache dataset runs it for missing images only.

    The cache key covers the backbone weights and the preprocessing, so changing either
    starts a new cache while a re-run with nothing changed computes nothing.
    """
    bb = backbone_from_params(backbone)
    description = {"backbone": backbone_info["key"], "preprocessing": backbone_info["preprocessing"]}
    encoder = VitEncoder(
        bb,
        resolve_device(runtime.get("device", "auto")),
        batch_size=int(extraction["batch_size"]),
        num_workers=int(extraction["num_workers"]),
        amp_dtype=extraction.get("amp_dtype"),
    )

    def progress(done: int, total: int) -> None:
        rate = encoder.images_done / max(encoder.seconds, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        logger.info("extraction %d/%d images (%.1f images/s, ETA %.0fs)", done, total, rate, eta)

    unique = images.drop_duplicates(["image_id", "content_hash"])[["image_id", "path", "content_hash"]]
    return FeatureExtractionJob(
        images=unique.reset_index(drop=True),
        cache_key=f"vit-{stable_hash(description)}",
        description=description,
        encode=lambda rows: encoder(rows["path"].tolist()),
        shard_size=int(extraction["shard_size"]),
        progress=progress,
    )


def summarize_extraction(vit_features: FeatureCache, images: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check every image has features; report cache size and what the last save did."""
    wanted = set(images["image_id"])
    missing = sorted(wanted - set(vit_features.image_ids))
    if missing:
        raise RuntimeError(f"feature cache lacks {len(missing)} images, e.g. {missing[:5]}")
    stats = dict(getattr(vit_features, "last_save", {}) or {})
    report = {
        "cache_key": vit_features.cache_key,
        "images": len(wanted),
        "tokens": vit_features.tokens,
        "dim": vit_features.dim,
        "last_save": stats,
    }
    metrics = {
        f"extraction.{k}": {"value": float(v), "step": 0}
        for k, v in {"images": len(wanted), **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}.items()
    }
    if stats.get("encode_seconds"):
        metrics["extraction.images_per_s"] = {
            "value": float(stats["computed"]) / max(float(stats["encode_seconds"]), 1e-9), "step": 0
        }
    return report, metrics


def embed_initial_targets(
    vit_features: FeatureCache,
    images: pd.DataFrame,
    backbone: dict[str, Any],
    training: dict[str, Any],
    runtime: dict[str, Any],
) -> pd.DataFrame:
    """The untrained model's target embeddings per image (zero-shot / first mining).

    Returns a table ``image_id, num_tokens, dim, embedding`` where ``embedding`` is the
    row-major flattened (num_tokens x dim) matrix.
    """
    cfg = train_config(training, runtime, backbone)
    model = build_model(backbone_from_params(backbone), cfg)
    ids = sorted(set(images["image_id"]))
    emb = encode_images(model, vit_features, ids, amp_dtype=cfg.amp_dtype).numpy().astype(np.float32)
    n, q, p = emb.shape
    return pd.DataFrame(
        {"image_id": ids, "num_tokens": q, "dim": p, "embedding": list(emb.reshape(n, q * p))}
    )
