"""Nodes of the ``data_ingestion`` pipeline (thin adapters over ``data_sources``)."""

from __future__ import annotations

import logging
from dataclasses import field
from pathlib import Path
from typing import Any

import pandas as pd

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import (
    IngestResult,
    dataset_fingerprint,
    enforce_rejection_threshold,
)
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark
from dqe_cir_pipeline.model.config import build_strict, config_block
from dqe_cir_pipeline.tracking import metric_values

logger = logging.getLogger(__name__)

BENCHMARKS = ("synthetic", "fashioniq", "cirr")


@config_block
class FashionIQSource:
    """Where FashionIQ lies and what to read of it (``data.fashioniq``)."""

    annotation_root: str = "data/fashioniq/01_raw/annotations"
    image_root: str = "data/fashioniq/01_raw/images"
    categories: list[str] = field(default_factory=lambda: ["dress", "shirt", "toptee"])
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    image_exts: list[str] = field(default_factory=lambda: ["jpg", "png"])
    random_train_forms: bool = True


@config_block
class CIRRSource:
    """Where CIRR lies and what to read of it (``data.cirr``)."""

    annotation_root: str = "data/cirr/01_raw/annotations"
    image_root: str = "data/cirr/01_raw/images"
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test1"])
    image_only_splits: list[str] = field(default_factory=list)


@config_block
class DataConfig:
    """The ``data`` block: which benchmark, the rejection threshold, each benchmark's source.

    ``synthetic`` holds the generator's settings (``SyntheticConfig``'s fields) plus
    ``root``, the folder it writes; they are checked here, at start-up, by building the
    generator's configuration once.
    """

    benchmark: str = "synthetic"
    max_rejected_fraction: float = 0.02
    check_workers: int = 8
    synthetic: dict[str, Any] = field(
        default_factory=lambda: {"root": "data/synthetic/01_raw/benchmark"}
    )
    fashioniq: FashionIQSource = field(default_factory=FashionIQSource)
    cirr: CIRRSource = field(default_factory=CIRRSource)

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"data.benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        if "root" not in self.synthetic:
            raise ValueError(
                "data.synthetic.root is missing: the folder the benchmark is written to"
            )
        self.generator()  # an unknown key or a bad value fails now, naming it

    def generator(self) -> SyntheticConfig:
        """The generated benchmark's settings (``data.synthetic`` without ``root``)."""
        settings = {k: v for k, v in self.synthetic.items() if k != "root"}
        return build_strict(SyntheticConfig, settings, "data.synthetic")


def prepare_benchmark_source(data: DataConfig) -> dict[str, Any]:
    """Generate the embedded benchmark, or check that a real benchmark's folders exist.

    Returns:
        ``{"dataset", "annotation_root", "image_root", "generation"}``: where the reader
        finds the benchmark, and the generator's summary for the synthetic one.
    """
    benchmark = data.benchmark
    if benchmark == "synthetic":
        root = str(data.synthetic["root"])
        summary = generate_benchmark(root, data.generator())
        return {
            "dataset": "synthetic",
            "annotation_root": root,
            "image_root": root,
            "generation": summary,
        }
    cfg = getattr(data, benchmark)
    for key in ("annotation_root", "image_root"):
        path = Path(getattr(cfg, key))
        if not path.is_dir():
            raise FileNotFoundError(
                f"{benchmark}: data.{benchmark}.{key} = {path} is not a folder. Download the "
                f"benchmark (see README, 'Running on real data') and set data.{benchmark}.{key} "
                "in conf/local/parameters.yml."
            )
    return {
        "dataset": benchmark,
        "annotation_root": cfg.annotation_root,
        "image_root": cfg.image_root,
        "generation": {},
    }


def synthetic_splits(generator: SyntheticConfig) -> tuple[str, ...]:
    """The generated benchmark's splits: train, val and, when it has families, test."""
    return ("train", "val", "test") if generator.test_families > 0 else ("train", "val")


def ingest_benchmark(
    source: dict[str, Any], data: DataConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the benchmark into the canonical images / triplets / quarantine tables."""
    dataset = source["dataset"]
    workers = data.check_workers
    if dataset == "fashioniq":
        fiq = data.fashioniq
        result = read_fashioniq(
            source["annotation_root"],
            source["image_root"],
            FashionIQConfig(
                categories=tuple(fiq.categories),
                splits=tuple(fiq.splits),
                image_exts=tuple(fiq.image_exts),
                random_train_forms=fiq.random_train_forms,
                workers=workers,
            ),
        )
    elif dataset == "cirr":
        result = read_cirr(
            source["annotation_root"],
            source["image_root"],
            CIRRConfig(
                splits=tuple(data.cirr.splits),
                image_only_splits=tuple(data.cirr.image_only_splits),
                workers=workers,
            ),
        )
    else:
        result = read_cirr(
            source["annotation_root"],
            source["image_root"],
            CIRRConfig(
                splits=synthetic_splits(data.generator()),
                dataset_name="synthetic",
                version=None,
                unlabelled_splits=(),  # every generated split has targets, test included
                workers=workers,
            ),
        )
    counts = result.counts()
    logger.info("ingested %s: %s", dataset, counts)
    return result.images, result.triplets, result.quarantine


def validate_ingestion(
    images: pd.DataFrame, triplets: pd.DataFrame, quarantine: pd.DataFrame, data: DataConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fail on too many rejections; report counts (JSON) and MLflow metrics.

    The quarantine table is already saved when this node runs, so a failing run
    leaves the rejected rows on disk for inspection.
    """
    result = IngestResult(images=images, triplets=triplets, quarantine=quarantine)
    enforce_rejection_threshold(result, data.max_rejected_fraction)
    counts = result.counts()
    per_split = {
        f"triplets/{split}": int(n) for split, n in triplets.groupby("split").size().items()
    }
    per_split.update(
        {f"images/{split}": int(n) for split, n in images.groupby("split").size().items()}
    )
    per_edit = {
        f"triplets/{split}/{edit}": int(n)
        for (split, edit), n in triplets.groupby(["split", "edit_type"]).size().items()
    }
    reasons = (
        quarantine["reason"].str.split(":").str[0].value_counts().to_dict()
        if len(quarantine)
        else {}
    )
    report = {
        "dataset": sorted(set(images["dataset"])),
        "fingerprint": dataset_fingerprint(images, triplets),
        "counts": counts,
        "per_split": per_split,
        "per_edit_type": per_edit,
        "quarantine_reasons": {str(k): int(v) for k, v in reasons.items()},
    }
    return report, metric_values({**counts, **per_split})
