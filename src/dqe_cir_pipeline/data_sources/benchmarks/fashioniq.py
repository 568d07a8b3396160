"""FashionIQ (dress / shirt / toptee), downloaded by the user, read by ``data_sources.fashioniq``.

Protocol, as the FashionIQ papers evaluate: each category's queries ranked in that
category's own gallery with the reference kept, Recall@10 and @50 per category and their
means; training negatives come from the query's category.
"""

from __future__ import annotations

from dataclasses import field

from dqe_cir_pipeline.data_sources.common import IngestResult
from dqe_cir_pipeline.data_sources.fashioniq import (
    DATASET,
    FashionIQConfig,
    FashionIQLayout,
    layout_of,
    read_fashioniq,
)
from dqe_cir_pipeline.data_sources.registry import Benchmark, ReadSettings
from dqe_cir_pipeline.model.config import config_block
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, SummaryBreakdown


@config_block
class FashionIQSource:
    """Where FashionIQ lies and what to read of it (``data.fashioniq``)."""

    annotation_root: str = "data/fashioniq/01_raw/annotations"
    image_root: str = "data/fashioniq/01_raw/images"
    categories: list[str] = field(default_factory=lambda: ["dress", "shirt", "toptee"])
    splits: list[str] = field(default_factory=lambda: ["train", "val"])
    image_exts: list[str] = field(default_factory=lambda: ["jpg", "png"])
    random_train_forms: bool = True


def _config(block: FashionIQSource, settings: ReadSettings) -> FashionIQConfig:
    return FashionIQConfig(
        categories=tuple(block.categories),
        splits=tuple(block.splits),
        image_exts=tuple(block.image_exts),
        random_train_forms=block.random_train_forms,
        workers=settings.workers,
        image_check=settings.image_check,
    )


def _layout(block: FashionIQSource) -> FashionIQLayout:
    return layout_of(block.annotation_root, _config(block, ReadSettings(1, "exists")))


def _read(
    annotation_root: str, image_root: str, block: FashionIQSource, settings: ReadSettings
) -> IngestResult:
    return read_fashioniq(annotation_root, image_root, _config(block, settings))


BENCHMARK = Benchmark(
    name=DATASET,
    source_type=FashionIQSource,
    read=_read,
    protocol=BenchmarkProtocol(
        per_category=True,
        remove_reference=False,
        ks=(10, 50),
        # the means over categories, then each category (model.retrieval's names)
        summary_metrics=("mean/recall@10", "mean/recall@50", "avg"),
        breakdown=SummaryBreakdown("category", ("recall@10", "recall@50"), overall="mean"),
    ),
    layout=_layout,
)
