"""Fixtures for pipeline tests: a tiny generated benchmark run through ingestion and
extraction once per session (the expensive part), reused by the later-stage tests.

The catalog is in memory except the datasets whose nodes hand them a lazy job or a
handle: the feature cache, the mined negatives and the image check record, real
datasets on a temporary folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro.validation.parameter_validator import ParameterValidator

from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.datasets.feature_cache import FeatureCacheDataset
from dqe_cir_pipeline.datasets.image_check_record import ImageCheckRecordDataset
from dqe_cir_pipeline.datasets.mined_negatives import MinedNegativesDataset
from dqe_cir_pipeline.pipeline_registry import register_pipelines


def load_params(tmp: Path) -> dict[str, Any]:
    """The `test` env's parameters as a run reads them, every path under ``tmp``."""
    overrides = {
        "data": {"benchmark": "synthetic", "synthetic": {"root": str(tmp / "benchmark")}},
        "backbone": {"tiny_dir": str(tmp / "tiny_backbone")},
        "training": {"loop": {"run_dir": str(tmp / "run")}},
        "runtime": {"device": "cpu"},
    }
    return project_config_loader("test", runtime_params=overrides)["parameters"]


class KeptDataset(MemoryDataset):
    """An in-memory dataset the runner does not release, so tests can inspect it."""

    def _release(self) -> None:
        pass


def stored_datasets(tmp: Path) -> dict[str, Any]:
    """The datasets that must be real (their nodes hand them a job or a handle)."""
    return {
        "vit_features": FeatureCacheDataset(filepath=str(tmp / "vit_cache")),
        "mined_negatives": MinedNegativesDataset(path=str(tmp / "mined_negatives")),
        "image_check_record": ImageCheckRecordDataset(filepath=str(tmp / "image_checks.parquet")),
    }


def catalog_for(params: dict[str, Any], tmp: Path) -> DataCatalog:
    """Every dataset of the full pipeline in memory, except :func:`stored_datasets`."""
    pipes = register_pipelines()
    full = pipes["__default__"] + pipes["zero_shot"] + pipes["cirr_submission"]
    stored = stored_datasets(tmp)
    catalog = DataCatalog(stored)
    for name in sorted(full.datasets()):
        if name.startswith("params:") or name in stored:
            continue
        catalog[name] = KeptDataset()
    # the nodes' typed parameters, instantiated by Kedro's own validator as a run does
    typed = ParameterValidator(pipes).validate_raw_params(params)
    for key, value in typed.items():
        catalog[f"params:{key}"] = MemoryDataset(value, copy_mode="assign")
    return catalog


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Catalog after ingestion + extraction + mining of a tiny generated benchmark."""
    tmp = tmp_path_factory.mktemp("pipeline")
    params = load_params(tmp)
    catalog = catalog_for(params, tmp)
    pipes = register_pipelines()
    SequentialRunner().run(
        pipes["data_ingestion"] + pipes["embedding_extraction"] + pipes["negative_mining"], catalog
    )
    return {"tmp": tmp, "params": params, "catalog": catalog}
