"""Nodes of the ``data_ingestion`` pipeline (thin adapters over ``data_sources``).

``prepare_benchmark_source`` (generate or locate the benchmark) is
``data_sources.ingest``'s, used as a node as it is.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pandas as pd

from dqe_cir_pipeline.data_sources.common import (
    IngestionError,
    IngestResult,
    dataset_fingerprint,
    reason_code,
    rejection_message,
    rejection_problems,
)
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.data_sources.image_check import CheckRecordFile
from dqe_cir_pipeline.data_sources.ingest import FAILED, PASSED, read_benchmark
from dqe_cir_pipeline.tracking import metric_values

logger = logging.getLogger(__name__)


def ingest_benchmark(
    source: dict[str, Any], data: DataConfig, image_check_record: CheckRecordFile
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Read the benchmark into the canonical images / triplets / quarantine tables.

    The quarantine table is saved at once (a failed validation leaves it on disk for
    inspection); images and triplets stay in memory until ``publish_tables`` has seen
    the verdict. Image files the record lists as good and unchanged since are not read
    again; the record is then rewritten with this run's good files.

    Returns:
        The three tables and the record's counts (``reused``, ``checked`` files).
    """
    record = image_check_record.read(data.image_check)
    result = read_benchmark(source, data, record=record)
    image_check_record.write(record)
    stats = record.stats()
    logger.info(
        "ingested %s: %s; image files: %d reused from %s, %d checked (%s)",
        source["dataset"],
        result.counts(),
        stats["reused"],
        image_check_record.path,
        stats["checked"],
        data.image_check,
    )
    return result.images, result.triplets, result.quarantine, stats


def validate_ingestion(
    images: pd.DataFrame,
    triplets: pd.DataFrame,
    quarantine: pd.DataFrame,
    image_checks: dict[str, Any],
    data: DataConfig,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Judge the rejections and report them: the verdict, counts (JSON) and MLflow metrics.

    Never raises on too many rejections: the report (with ``verdict: failed`` and the
    problems) and the metrics must reach disk and MLflow first; ``publish_tables`` then
    fails the run. Metrics: the counts, per split, ``quarantine.<reason code>`` (spaces
    as ``_``) and the image files checked (``images_rechecked``) or reused from the record.

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
        "image_check": image_checks,
    }
    if problems:
        logger.error("ingestion failed validation:\n%s", "\n".join(problems))
    quarantined = {f"quarantine.{k.replace(' ', '_')}": n for k, n in reasons.items()}
    files = {"images_rechecked": image_checks["checked"], "images_reused": image_checks["reused"]}
    metrics = metric_values(
        {**counts, **per_split, **quarantined, **files, "verdict_passed": float(not problems)},
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
