"""What several hooks read from the Kedro project: its root, where a catalog entry writes,
its ``mlflow.yml``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.config import MissingConfigException
from kedro.io import DataCatalog

from dqe_cir_pipeline.config_loader import kedro_project_root

if TYPE_CHECKING:  # importing it sets up Kedro's logging; hooks only receive one
    from kedro.framework.context import KedroContext


def project_root(context: KedroContext | None) -> Path:
    """The root the run's configuration resolves against (the folder holding ``conf``);
    without a context, the Kedro project around the current directory."""
    if context is None:
        return kedro_project_root()
    return kedro_project_root(context.config_loader.conf_source)


def catalog_location(catalog: DataCatalog, name: str) -> str | None:
    """Where a catalog entry writes (its ``filepath``), if it has one."""
    if name not in catalog:
        return None
    described = catalog.get(name)._describe()  # noqa: SLF001 - Kedro's own description
    inner = described.get("dataset") if isinstance(described.get("dataset"), dict) else {}
    return described.get("filepath") or inner.get("filepath")


def mlflow_settings(context: KedroContext) -> dict[str, Any]:
    """The project's ``mlflow.yml`` as kedro-mlflow will read it (registering its pattern)."""
    loader = context.config_loader
    if "mlflow" not in loader.config_patterns:
        loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
    try:
        return dict(loader["mlflow"])
    except MissingConfigException:  # no mlflow.yml: kedro-mlflow's defaults, nothing to do
        return {}
