"""Locate (or generate) the configured benchmark and read it: what ingestion runs, and
what the pre-flight check runs to predict ingestion's verdict."""

from __future__ import annotations

from typing import Any

from dqe_cir_pipeline.data_sources.common import IngestResult
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.data_sources.image_check import CheckRecord, recording_checks
from dqe_cir_pipeline.data_sources.registry import benchmark

#: ``ingestion_report["verdict"]``: the tables passed the rejection threshold, or not.
PASSED, FAILED = "passed", "failed"


def prepare_benchmark_source(data: DataConfig) -> dict[str, Any]:
    """Generate the active benchmark, or check that a downloaded one's folders exist.

    Returns:
        ``{"dataset", "annotation_root", "image_root", "generation"}``: where the reader
        finds the benchmark, and the generator's summary for a generated one.
    """
    folders = data.entry.folders(data.source)
    return {
        "dataset": data.benchmark,
        "annotation_root": folders.annotation_root,
        "image_root": folders.image_root,
        "generation": folders.generation,
    }


def read_benchmark(
    source: dict[str, Any],
    data: DataConfig,
    image_check: str | None = None,
    record: CheckRecord | None = None,
) -> IngestResult:
    """Read the benchmark ``source`` points at with the reader and block ``data`` configures.

    The one place the ``data`` block becomes reader settings: ingestion reads through it,
    and the pre-flight check too (with ``image_check="exists"``), so both apply the
    same rules.

    Args:
        source: ``prepare_benchmark_source``'s output (dataset, annotation and image roots).
        data: The ``data`` block.
        image_check: Overrides ``data.image_check`` (one of ``image_check.IMAGE_CHECKS``).
        record: Files an earlier run found good: those unchanged since are not read
            again, and ``record`` collects this run's good files (used only when its
            mode is the check's).
    """
    name = source["dataset"]
    with recording_checks(record):
        return benchmark(name).read(
            source["annotation_root"],
            source["image_root"],
            getattr(data, name),
            data.read_settings(image_check),
        )
