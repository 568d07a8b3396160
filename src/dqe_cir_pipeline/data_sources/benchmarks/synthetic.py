"""The embedded default: a benchmark generated in the CIRR layout, read by the CIRR reader.

``data.synthetic`` holds the generator's settings (``SyntheticConfig``'s fields) and
``root``, the folder it writes. The protocol is CIRR's (whole gallery, reference
removed, Recall_subset) plus Recall@K per edit type, whose labels are exact here; the
recorded scenes make the attribute contrasts exact too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import IngestResult
from dqe_cir_pipeline.data_sources.registry import (
    GENERATED,
    Benchmark,
    Folders,
    ReadSettings,
)
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark
from dqe_cir_pipeline.model.config import build_strict
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol, SummaryBreakdown

NAME = "synthetic"


@dataclass(frozen=True)
class SyntheticSource(SyntheticConfig):
    """``data.synthetic``: the generator's settings plus ``root``, the folder it writes."""

    root: str = "data/synthetic/01_raw/benchmark"

    def generator(self) -> SyntheticConfig:
        """The generator's own settings (without ``root``: it is not part of its hash)."""
        return SyntheticConfig(**{f.name: getattr(self, f.name) for f in fields(SyntheticConfig)})


def synthetic_splits(generator: SyntheticConfig) -> tuple[str, ...]:
    """The generated benchmark's splits: train, val and, when it has families, test."""
    return ("train", "val", "test") if generator.test_families > 0 else ("train", "val")


def _build(values: Mapping[str, Any], where: str) -> SyntheticSource:
    if "root" not in values:
        raise ValueError(f"{where}.root is missing: the folder the benchmark is written to")
    return build_strict(SyntheticSource, values, where)


def _generate(block: SyntheticSource) -> Folders:
    root = str(block.root)
    summary = generate_benchmark(root, block.generator())
    return Folders(annotation_root=root, image_root=root, generation=summary)


def _read(
    annotation_root: str, image_root: str, block: SyntheticSource, settings: ReadSettings
) -> IngestResult:
    return read_cirr(
        annotation_root,
        image_root,
        CIRRConfig(
            splits=synthetic_splits(block.generator()),
            dataset_name=NAME,
            version=None,
            unlabelled_splits=(),  # every generated split has targets, test included
            workers=settings.workers,
            image_check=settings.image_check,
        ),
    )


BENCHMARK = Benchmark(
    name=NAME,
    source_type=SyntheticSource,
    read=_read,
    protocol=BenchmarkProtocol(
        subset_ks=CIRR_SUBSET_KS,
        edit_type_breakdown=True,
        scene_labels=True,
        summary_metrics=(
            "recall@1",
            "recall@5",
            "recall@10",
            "recall@50",
            "recall_subset@1",
            "avg",
        ),
        breakdown=SummaryBreakdown("edit", ("recall@10",)),
    ),
    generate=_generate,
    preflight=GENERATED,
    build=_build,
)
