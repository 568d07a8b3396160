"""The ``data`` block (``DataConfig``): which benchmark, the rejection rule, each benchmark's block.

``DataConfig`` has the settings every benchmark shares and one field per registered
benchmark (``data.synthetic``, ``data.fashioniq``, ``data.cirr``, ...), so the blocks
keep their place in the parameters and in MLflow's params. Those fields are made from
the registry when this module is imported: a new benchmark needs no change here. Each
block is built and checked through its entry at start-up, the active one and the others.
"""

from __future__ import annotations

from dataclasses import field
from typing import TYPE_CHECKING, Any

from dqe_cir_pipeline.data_sources.benchmarks.synthetic import NAME as GENERATED_BENCHMARK
from dqe_cir_pipeline.data_sources.image_check import IMAGE_CHECKS
from dqe_cir_pipeline.data_sources.registry import (
    Benchmark,
    ReadSettings,
    benchmark,
    benchmark_names,
    benchmarks,
)
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig
from dqe_cir_pipeline.model.config import config_block


@config_block
class DataSettings:
    """The ``data`` settings every benchmark shares (``DataConfig`` adds the blocks).

    ``max_rejected_fraction`` is judged per split (and per FashionIQ category), for
    images and triplets separately (``data_sources.common.rejection_problems``).
    ``image_check`` is how thoroughly each image file is checked: ``decode`` (every
    pixel; a truncated JPEG is quarantined) or ``header`` (the container only, faster).
    """

    benchmark: str = GENERATED_BENCHMARK
    max_rejected_fraction: float = 0.02
    check_workers: int = 8
    image_check: str = "decode"

    def __post_init__(self) -> None:
        if self.benchmark not in benchmark_names():
            raise ValueError(
                f"data.benchmark must be one of {benchmark_names()}, got {self.benchmark!r}"
            )
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
        for entry in benchmarks():  # an unknown key or a bad value fails now, naming it
            setattr(self, entry.name, entry.source(getattr(self, entry.name)))

    @property
    def entry(self) -> Benchmark[Any]:
        """The active benchmark's registry entry."""
        return benchmark(self.benchmark)

    @property
    def source(self) -> Any:
        """The active benchmark's block (``data.<benchmark>``)."""
        return getattr(self, self.benchmark)

    def read_settings(self, image_check: str | None = None) -> ReadSettings:
        """The readers' image-check settings (``image_check`` overrides the block's)."""
        return ReadSettings(workers=self.check_workers, image_check=image_check or self.image_check)

    def generator(self) -> SyntheticConfig:
        """The generated benchmark's settings (``data.synthetic`` without ``root``), whatever
        the active benchmark: pretraining keeps its corpus apart from those scenes."""
        return getattr(self, GENERATED_BENCHMARK).generator()


def _data_config() -> type[DataSettings]:
    """``DataSettings`` plus one field per registered benchmark, defaulting to its block's
    defaults (Kedro builds the class from the ``data`` parameters: ``DataConfig(**data)``)."""
    entries = benchmarks()
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": "DataConfig",
        "__doc__": "The ``data`` block: ``DataSettings`` and each benchmark's block.",
        "__annotations__": {entry.name: Any for entry in entries},
    }
    for entry in entries:
        namespace[entry.name] = field(default_factory=entry.source_type)
    return config_block(type("DataConfig", (DataSettings,), namespace))


if TYPE_CHECKING:  # the fields below are made at import, from the registry

    class DataConfig(DataSettings):
        def __getattr__(self, name: str) -> Any: ...

else:
    DataConfig = _data_config()
