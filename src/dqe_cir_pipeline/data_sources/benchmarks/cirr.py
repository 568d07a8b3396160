"""CIRR (rc2), downloaded by the user, read by ``data_sources.cirr``.

Protocol, as the CIRR paper evaluates: the split's whole gallery with the reference
removed, Recall@K and Recall_subset@1/2/3 over ``img_set.members``.
"""

from __future__ import annotations

from dataclasses import field

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, CIRRLayout, layout_of, read_cirr
from dqe_cir_pipeline.data_sources.common import IngestResult
from dqe_cir_pipeline.data_sources.layout import CAPTIONS, AnnotationFile
from dqe_cir_pipeline.data_sources.registry import Benchmark, ReadSettings
from dqe_cir_pipeline.model.config import config_block
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol

NAME = "cirr"


@config_block
class CIRRSource:
    """Where CIRR lies and what to read of it (``data.cirr``)."""

    annotation_root: str = "data/cirr/01_raw/annotations"
    image_root: str = "data/cirr/01_raw/images"
    splits: list[str] = field(default_factory=lambda: ["train", "val", "test1"])
    image_only_splits: list[str] = field(default_factory=list)


def _config(block: CIRRSource, settings: ReadSettings) -> CIRRConfig:
    return CIRRConfig(
        splits=tuple(block.splits),
        dataset_name=NAME,
        image_only_splits=tuple(block.image_only_splits),
        workers=settings.workers,
        image_check=settings.image_check,
    )


def _layout(block: CIRRSource) -> CIRRLayout:
    return layout_of(block.annotation_root, _config(block, ReadSettings(1, "exists")))


def _missing_file_hint(file: AnnotationFile) -> str:
    """A missing captions file is fine for a split read for its images only."""
    if file.kind != CAPTIONS:
        return ""
    return (
        f"needed to train on / evaluate {file.split!r}; to read its images only (e.g. "
        f"evaluation without train captions) set data.{NAME}.image_only_splits: "
        f'[{file.split}] (--params "data.{NAME}.image_only_splits=[{file.split}]")'
    )


def _read(
    annotation_root: str, image_root: str, block: CIRRSource, settings: ReadSettings
) -> IngestResult:
    return read_cirr(annotation_root, image_root, _config(block, settings))


BENCHMARK = Benchmark(
    name=NAME,
    source_type=CIRRSource,
    read=_read,
    protocol=BenchmarkProtocol(
        subset_ks=CIRR_SUBSET_KS,
        summary_metrics=(
            "recall@1",
            "recall@5",
            "recall@10",
            "recall@50",
            *(f"recall_subset@{k}" for k in CIRR_SUBSET_KS),
            "avg",
        ),
    ),
    layout=_layout,
    missing_file_hint=_missing_file_hint,
)
