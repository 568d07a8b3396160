"""Project settings: config loader, hooks and the resolvers the config files use."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from dqe_cir_pipeline import quiet
from dqe_cir_pipeline.config_loader import LocalOverlayConfigLoader, active_project_root
from dqe_cir_pipeline.hooks.distributed import DistributedHooks
from dqe_cir_pipeline.hooks.guards import IngestionVerdictHooks, MissingInputHooks, RunLockHooks
from dqe_cir_pipeline.hooks.provenance import IngestionArtifactHooks, ProvenanceHooks
from dqe_cir_pipeline.hooks.resources import ResourceHooks
from dqe_cir_pipeline.hooks.serving import ServingModelHooks
from dqe_cir_pipeline.hooks.store import MlflowStoreHooks
from dqe_cir_pipeline.hooks.summary import SummaryHooks, SummaryPrintHooks
from dqe_cir_pipeline.launch import data_root, launch_rank

# Start-up noise that is not the user's business, silenced at its source (quiet.py).
quiet.install()


class _MetricsRebindFilter(logging.Filter):
    """kedro-mlflow re-binds every ``*_metrics`` dataset to the active MLflow run, which
    Kedro reports as a WARNING "Replacing dataset '<name>_metrics'": expected, so dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Replacing dataset") and "_metrics'" in message)


logging.getLogger("kedro.io.data_catalog").addFilter(_MetricsRebindFilter())

# The resolvers below make paths absolute against the project whose configuration is
# being read (the folder holding ``conf``: config_loader.active_project_root), never
# against where this package is installed.


def _project_root() -> str:
    """``${project_root:}``: the Kedro project the command runs in."""
    return active_project_root().as_posix()


def _data_root() -> str:
    """``${data_root:}``: where every catalog path lives (``DQE_DATA_ROOT`` overrides)."""
    return data_root(active_project_root()).as_posix()


def _tracking_uri() -> str:
    """``${tracking_uri:}``: an sqlite MLflow store at the project root.

    MLflow 3 refuses the old ``./mlruns`` file store, and a relative
    ``sqlite:///mlflow.db`` would be relative to the current directory, so the path is
    made absolute here. ``MLFLOW_TRACKING_URI`` overrides it (e.g. a tracking server).
    """
    return os.environ.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{(active_project_root() / 'mlflow.db').as_posix()}"
    )


def _artifact_root() -> str:
    """``${artifact_root:}``: the folder MLflow writes artifacts to (not the database)."""
    return os.environ.get("DQE_MLFLOW_ARTIFACTS", (active_project_root() / "mlartifacts").as_uri())


class _DownloadedBenchmarks:
    """The names of the downloaded benchmarks, read from the benchmark registry when the
    config loader is built (not when this module is imported: every ``kedro`` command
    imports it, and the registry imports the readers)."""

    def __iter__(self) -> Iterator[str]:
        from dqe_cir_pipeline.data_sources.registry import downloaded_benchmarks

        return iter(downloaded_benchmarks())


# built while the MLflow run is open, printed after every other hook (the run's last lines)
_SUMMARY = SummaryHooks()

# Every hook of the project, in registration order (hooks/__init__.py says what each
# module is for). Pluggy calls the hooks of one stage in the reverse order unless a hook
# says ``tryfirst`` / ``trylast``; the order below is the order that was tested.
HOOKS = (
    RunLockHooks(),  # guards: one run per data root
    MissingInputHooks(),  # guards: inputs an earlier pipeline writes
    IngestionVerdictHooks(),  # guards: no tables from a failed ingestion
    IngestionArtifactHooks(),  # provenance: quarantine and report to MLflow
    MlflowStoreHooks(),  # store: tracking store, abandoned runs, process tags
    ProvenanceHooks(),  # provenance: params, tags, run name, dataset input
    DistributedHooks(),  # distributed: rank 0 writes under torchrun
    ResourceHooks(),  # resources: time and memory per node
    _SUMMARY,  # summary: built while the MLflow run is open
    ServingModelHooks(),  # serving: input example, registered name, requirements
    SummaryPrintHooks(_SUMMARY),  # summary: printed last
)

# Under ``torchrun`` only rank 0 is an MLflow run: the other ranks never load
# kedro-mlflow's hooks (no second run, no racing writes to the tracking store).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-mlflow", "kedro_mlflow") if launch_rank()[0] > 0 else ()

CONFIG_LOADER_CLASS = LocalOverlayConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # A `local` (or benchmark env) override of one key must not wipe its whole block.
    "merge_strategy": {"parameters": "soft", "mlflow": "soft"},
    # conf/local/parameters*.yml (data roots, weights) also applies to the environments
    # named after the downloaded benchmarks (fashioniq, cirr)
    "local_overlay_envs": _DownloadedBenchmarks(),
    "custom_resolvers": {
        "data_root": _data_root,
        "tracking_uri": _tracking_uri,
        "artifact_root": _artifact_root,
        "project_root": _project_root,
    },
}
