"""Nodes of the ``embedding_extraction`` pipeline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache, FeatureExtractionJob
from dqe_cir_pipeline.io_utils import stable_hash
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.model.backbone_info import describe_architecture
from dqe_cir_pipeline.model.config import RuntimeConfig, config_block
from dqe_cir_pipeline.model.data import train_captions
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.extract import VitEncoder
from dqe_cir_pipeline.tracking import metric_values

logger = logging.getLogger(__name__)


@config_block
class ExtractionConfig:
    """Frozen-ViT feature extraction (``extraction``).

    Attributes:
        batch_size: images per forward (halved automatically on CUDA out-of-memory).
        shard_size: images per cache shard (the unit of resume).
        num_workers: DataLoader decode workers (4-8 on a GPU machine).
        verify_checksums: before reusing the cache, compare every shard's CRC-32 with
            the one recorded when it was written (reads the cache once: about a minute
            for FashionIQ at ViT-g size); sizes are always checked. A damaged shard is
            set aside and recomputed.
    """

    batch_size: int = 64
    shard_size: int = 1024
    num_workers: int = 0
    verify_checksums: bool = True


def prepare_backbone(triplets: pd.DataFrame, backbone: BackboneConfig) -> dict[str, Any]:
    """Load the backbone (building the tiny preset and its tokenizer once) and describe it:
    weights key, sizes, preprocessing, and its architecture (``arch``, ``vision_tower``,
    ``vision_depth``: from ``lavis_conversion.json`` for a folder converted from LAVIS)."""
    bb = load_backbone(backbone, train_captions(triplets) if backbone.source == "tiny" else None)
    vcfg = bb.model.config.vision_config
    qcfg = bb.model.config.qformer_config
    folder = Path(bb.name).expanduser() if backbone.source != "tiny" else None
    info = {
        "key": bb.key,
        "name": bb.name,
        "source": backbone.source,
        "image_size": int(bb.preprocessor.image_size),
        "vision_hidden": int(vcfg.hidden_size),
        "vision_layers": int(vcfg.num_hidden_layers),
        "qformer_hidden": int(qcfg.hidden_size),
        "num_query_tokens": int(bb.model.config.num_query_tokens),
        "vocab_size": int(len(bb.tokenizer)),
        "preprocessing": bb.preprocessor.settings(),
        **describe_architecture(
            bb.model.config, backbone.source, folder if folder and folder.is_dir() else None
        ),
    }
    logger.info(
        "backbone %s: %s, %s depth %d (key %s)",
        info["name"],
        info["arch"],
        info["vision_tower"],
        info["vision_depth"],
        info["key"],
    )
    return info


def extract_features(
    images: pd.DataFrame,
    backbone_info: dict[str, Any],
    backbone: BackboneConfig,
    extraction: ExtractionConfig,
    runtime: RuntimeConfig,
) -> FeatureExtractionJob:
    """Describe the extraction; the feature cache dataset runs it for missing images only.

    The cache key covers the backbone weights and the preprocessing, so changing either
    starts a new cache while a re-run with nothing changed computes nothing.
    """
    bb = load_backbone(backbone)
    description = {
        "backbone": backbone_info["key"],
        "preprocessing": backbone_info["preprocessing"],
    }
    encoder = VitEncoder(
        bb,
        resolve_device(runtime.device),
        batch_size=extraction.batch_size,
        num_workers=extraction.num_workers,
        amp_dtype=runtime.amp_dtype,
    )

    def progress(done: int, total: int) -> None:
        rate = encoder.images_done / max(encoder.seconds, 1e-9)
        eta = (total - done) / max(rate, 1e-9)
        logger.info("extraction %d/%d images (%.1f images/s, ETA %.0fs)", done, total, rate, eta)

    unique = images.drop_duplicates(["image_id", "content_hash"])[
        ["image_id", "path", "content_hash"]
    ]
    return FeatureExtractionJob(
        images=unique.reset_index(drop=True),
        cache_key=f"vit-{stable_hash(description)}",
        description=description,
        encode=lambda rows: encoder(rows["path"].tolist()),
        shard_size=extraction.shard_size,
        progress=progress,
        verify_checksums=extraction.verify_checksums,
    )


def summarize_extraction(
    vit_features: FeatureCache, images: pd.DataFrame
) -> tuple[dict[str, Any], dict[str, Any]]:
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
    figures = {
        "images": len(wanted),
        **{k: v for k, v in stats.items() if isinstance(v, (int, float))},
    }
    if stats.get("encode_seconds"):
        figures["images_per_s"] = float(stats["computed"]) / max(
            float(stats["encode_seconds"]), 1e-9
        )
    return report, metric_values(figures, prefix="extraction/")
