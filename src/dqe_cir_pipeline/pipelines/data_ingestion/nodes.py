"""Nodes of the ``data_ingestion`` pipeline (thin adapters over ``data_sources``)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import field
from pathlib import Path
from typing import Any

import pandas as pd

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import (
    IngestionError,
    IngestResult,
    dataset_fingerprint,
    reason_code,
    rejection_message,
    rejection_problems,
)
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq
from dqe_cir_pipeline.data_sources.image_check import IMAGE_CHECKS
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark
from dqe_cir_pipeline.model.config import build_strict, config_block
from dqe_cir_pipeline.tracking import metric_values

logger = logging.getLogger(__name__)

BENCHMARKS = ("synthetic", "fashioniq", "cirr")

#: ``ingestion_report["verdict"]``: the tables passed the rejection threshold, or not.
PASSED, FAILED = "passed", "failed"


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

    ``max_rejected_fraction`` is judged per split (and per FashionIQ category), for
    images and triplets separately (``data_sources.common.rejection_problems``).
    ``image_check`` is how thoroughly each image file is checked: ``decode`` (every
    pixel; a truncated JPEG is quarantined) or ``header`` (the container only, faster).

    ``synthetic`` holds the generator's settings (``SyntheticConfig``'s fields) plus
    ``root``, the folder it writes; they are checked here, at start-up, by building the
    generator's configuration once.
    """

    benchmark: str = "synthetic"
    max_rejected_fraction: float = 0.02
    check_workers: int = 8
    image_check: str = "decode"
    synthetic: dict[str, Any] = field(
        default_factory=lambda: {"root": "data/synthetic/01_raw/benchmark"}
    )
    fashioniq: FashionIQSource = field(default_factory=FashionIQSource)
    cirr: CIRRSource = field(default_factory=CIRRSource)

    def __post_init__(self) -> None:
        if self.benchmark not in BENCHMARKS:
            raise ValueError(f"data.benchmark must be one of {BENCHMARKS}, got {self.benchmark!r}")
        if self.image_check not in IMAGE_CHECKS[:2]:
            raise ValueError(
                f"data.image_check must be one of {IMAGE_CHECKS[:2]}, got {self.image_check!r}"
            )
        if not 0.0 <= self.max_rejected_fraction <= 1.0:
            raise ValueError(
                f"data.max_rejected_fraction must be in [0, 1], got {self.max_rejected_fraction}"
            )
        if self.check_workers < 1:
            raise ValueError(f"data.check_workers must be at least 1, got {self.check_workers}")
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


def read_benchmark(
    source: dict[str, Any], data: DataConfig, image_check: str | None = None
) -> IngestResult:
    """Read the benchmark ``source`` points at with the readers ``data`` configures.

    The one place the ``data`` block becomes reader settings: ingestion reads through it,
    and the pre-flight check too (with ``image_check="exists"``), so both apply the
    same rules.

    Args:
        source: ``prepare_benchmark_source``'s output (dataset, annotation and image roots).
        data: The ``data`` block.
        image_check: Overrides ``data.image_check`` (one of ``common.IMAGE_CHECKS``).
    """
    dataset = source["dataset"]
    workers = data.check_workers
    mode = image_check or data.image_check
    if dataset == "fashioniq":
        fiq = data.fashioniq
        return read_fashioniq(
            source["annotation_root"],
            source["image_root"],
            FashionIQConfig(
                categories=tuple(fiq.categories),
                splits=tuple(fiq.splits),
                image_exts=tuple(fiq.image_exts),
                random_train_forms=fiq.random_train_forms,
                workers=workers,
                image_check=mode,
            ),
        )
    if dataset == "cirr":
        return read_cirr(
            source["annotation_root"],
            source["image_root"],
            CIRRConfig(
                splits=tuple(data.cirr.splits),
                image_only_splits=tuple(data.cirr.image_only_splits),
                workers=workers,
                image_check=mode,
            ),
        )
    return read_cirr(
        source["annotation_root"],
        source["image_root"],
        CIRRConfig(
            splits=synthetic_splits(data.generator()),
            dataset_name="synthetic",
            version=None,
            unlabelled_splits=(),  # every generated split has targets, test included
            workers=workers,
            image_check=mode,
        ),
    )


def ingest_benchmark(
    source: dict[str, Any], data: DataConfig
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Read the benchmark into the canonical images / triplets / quarantine tables.

    The quarantine table is saved at once (a failed validation leaves it on disk for
    inspection); images and triplets stay in memory until ``publish_tables`` has seen
    the verdict.
    """
    result = read_benchmark(source, data)
    logger.info("ingested %s: %s", source["dataset"], result.counts())
    return result.images, result.triplets, result.quarantine


def validate_ingestion(
    images: pd.DataFrame, triplets: pd.DataFrame, quarantine: pd.DataFrame, data: DataConfig
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Judge the rejections and report them: the verdict, counts (JSON) and MLflow metrics.

    Never raises on too many rejections: the report (with ``verdict: failed`` and the
    problems) and the metrics must reach disk and MLflow first; ``publish_tables`` then
    fails the run. Metrics: the counts, per split, and ``quarantine.<reason code>``
    (spaces as ``_``).

    Returns:
        The report, the metrics, and the verdict alone (``verdict``, ``problems``,
        ``dataset``) for ``publish_tables``, in memory: the report is a reporting-layer
        file, and the tables must not be drawn as coming out of it.
    """
    result = IngestResult(images=images, triplets=triplets, quarantine=quarantine)
    problems = rejection_problems(result, data.max_rejected_fraction)
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
    reasons = Counter(reason_code(r) for r in quarantine["reason"])
    report = {
        "dataset": sorted(set(images["dataset"]) | set(quarantine["dataset"])),
        "verdict": FAILED if problems else PASSED,
        "problems": problems,
        "max_rejected_fraction": data.max_rejected_fraction,
        "fingerprint": dataset_fingerprint(images, triplets),
        "counts": counts,
        "per_split": per_split,
        "per_edit_type": per_edit,
        "quarantine_reasons": {str(k): int(v) for k, v in sorted(reasons.items())},
    }
    if problems:
        logger.error("ingestion failed validation:\n%s", "\n".join(problems))
    quarantined = {f"quarantine.{k.replace(' ', '_')}": n for k, n in reasons.items()}
    metrics = metric_values(
        {**counts, **per_split, **quarantined, "verdict_passed": float(not problems)},
        prefix="ingestion/",
    )
    verdict = {key: report[key] for key in ("verdict", "problems", "dataset")}
    return report, metrics, verdict


def publish_tables(
    images: pd.DataFrame, triplets: pd.DataFrame, verdict: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hand the tables to the later stages, only when validation passed.

    Raises:
        IngestionError: The verdict is ``failed``: nothing is published, and the
            message names each failing split / category with its share.
    """
    if verdict["verdict"] != PASSED:
        raise IngestionError(rejection_message(verdict["dataset"], verdict["problems"]))
    return images, triplets
