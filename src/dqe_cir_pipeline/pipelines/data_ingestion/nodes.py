"""Nodes of the ``data_ingestion`` pipeline (thin adapters over ``data_sources``)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import IngestResult, enforce_rejection_threshold
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark
from dqe_cir_pipeline.io_utils import SHORT_HASH_CHARS
from dqe_cir_pipeline.tracking import metric_values

logger = logging.getLogger(__name__)

BENCHMARKS = ("synthetic", "fashioniq", "cirr")


def prepare_benchmark_source(data: dict[str, Any]) -> dict[str, Any]:
    """Generate the embedded benchmark, or check that a real benchmark's folders exist.

    Returns:
        ``{"dataset", "annotation_root", "image_root", "generation"}``: where the reader
        finds the benchmark, and the generator's summary for the synthetic one.
    """
    benchmark = data["benchmark"]
    if benchmark not in BENCHMARKS:
        raise ValueError(f"data.benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    if benchmark == "synthetic":
        params = dict(data["synthetic"])
        root = params.pop("root")
        summary = generate_benchmark(root, SyntheticConfig(**params))
        return {"dataset": "synthetic", "annotation_root": root, "image_root": root, "generation": summary}
    cfg = data[benchmark]
    for key in ("annotation_root", "image_root"):
        path = Path(cfg[key])
        if not path.is_dir():
            raise FileNotFoundError(
                f"{benchmark}: data.{benchmark}.{key} = {path} is not a folder. Download the "
                f"benchmark (see README, 'Running on real data') and set data.{benchmark}.{key} "
                "in conf/local/parameters.yml."
            )
    return {
        "dataset": benchmark,
        "annotation_root": str(cfg["annotation_root"]),
        "image_root": str(cfg["image_root"]),
        "generation": {},
    }


def ingest_benchmark(
    source: dict[str, Any], data: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the benchmark into the canonical images / triplets / quarantine tables."""
    dataset = source["dataset"]
    workers = data.get("check_workers")
    if dataset == "fashioniq":
        p = data["fashioniq"]
        result = read_fashioniq(
            source["annotation_root"],
            source["image_root"],
            FashionIQConfig(
                categories=tuple(p["categories"]),
                splits=tuple(p["splits"]),
                image_exts=tuple(p["image_exts"]),
                random_train_forms=bool(p["random_train_forms"]),
                workers=workers,
            ),
        )
    elif dataset == "cirr":
        p = data["cirr"]
        splits = tuple(p["splits"])
        result = read_cirr(
            source["annotation_root"],
            source["image_root"],
            CIRRConfig(
                splits=splits,
                image_only_splits=tuple(p.get("image_only_splits", ())),
                workers=workers,
            ),
        )
    else:
        result = read_cirr(
            source["annotation_root"],
            source["image_root"],
            CIRRConfig(splits=("train", "val"), dataset_name="synthetic", version=None, workers=workers),
        )
    counts = result.counts()
    logger.info("ingested %s: %s", dataset, counts)
    return result.images, result.triplets, result.quarantine


def fingerprint(images: pd.DataFrame, triplets: pd.DataFrame) -> str:
    """A short hash of what the run trains and evaluates on (image bytes + queries)."""
    h = hashlib.sha256()

    def text(values: pd.Series) -> bytes:  # a missing value (unlabelled test target) hashes as ""
        return "\x1f".join("" if pd.isna(v) else str(v) for v in values).encode()

    for col in ("image_id", "split", "content_hash"):
        h.update(text(images[col]))
    for col in ("query_id", "split", "reference_id", "target_id", "caption_eval"):
        h.update(text(triplets[col]))
    return h.hexdigest()[:SHORT_HASH_CHARS]


def validate_ingestion(
    images: pd.DataFrame, triplets: pd.DataFrame, quarantine: pd.DataFrame, data: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fail on too many rejections; report counts (JSON) and MLflow metrics.

    The quarantine table is already saved when this node runs, so a failing run
    leaves the rejected rows on disk for inspection.
    """
    result = IngestResult(images=images, triplets=triplets, quarantine=quarantine)
    enforce_rejection_threshold(result, float(data["max_rejected_fraction"]))
    counts = result.counts()
    per_split = {
        f"triplets/{split}": int(n) for split, n in triplets.groupby("split").size().items()
    }
    per_split.update({f"images/{split}": int(n) for split, n in images.groupby("split").size().items()})
    per_edit = {
        f"triplets/{split}/{edit}": int(n)
        for (split, edit), n in triplets.groupby(["split", "edit_type"]).size().items()
    }
    reasons = (
        quarantine["reason"].str.split(":").str[0].value_counts().to_dict() if len(quarantine) else {}
    )
    report = {
        "dataset": sorted(set(images["dataset"])),
        "fingerprint": fingerprint(images, triplets),
        "counts": counts,
        "per_split": per_split,
        "per_edit_type": per_edit,
        "quarantine_reasons": {str(k): int(v) for k, v in reasons.items()},
    }
    return report, metric_values({**counts, **per_split})
