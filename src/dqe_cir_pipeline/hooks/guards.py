"""Refusals before a run's first node: a second run on one data root, inputs an earlier
pipeline has not written yet, tables from an ingestion that failed validation."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

from dqe_cir_pipeline.data_sources.common import dataset_fingerprint
from dqe_cir_pipeline.data_sources.ingest import PASSED
from dqe_cir_pipeline.hooks.project import catalog_location, project_root
from dqe_cir_pipeline.io_utils import FolderLock
from dqe_cir_pipeline.launch import data_root, launch_rank

if TYPE_CHECKING:  # importing it sets up Kedro's logging; hooks only receive one
    from kedro.framework.context import KedroContext

#: Stage pipelines in run order: the first that writes a dataset is named as its source.
STAGE_PIPELINES = (
    "data_ingestion",
    "embedding_extraction",
    "negative_mining",
    "training",
    "evaluation",
    "pretraining",
)
#: Ingestion's tables and the report that judged them (catalog names).
INGESTION_TABLES = ("images", "triplets")
INGESTION_REPORT = "ingestion_report"


class RunLockHooks:
    """One ``kedro run`` at a time per data root (``DQE_DATA_ROOT``, else the project's
    ``data/``).

    Two runs writing one data root mix their outputs (one run evaluating the checkpoint
    the other just wrote). The lock is taken when a pipeline starts and released when it
    ends or fails; a killed run's lock goes with its process (a kernel file lock). Under
    ``torchrun`` rank 0 holds it for all ranks (the others write nothing).
    """

    def __init__(self) -> None:
        self._lock: FolderLock | None = None
        self._root: Path | None = None

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._root = project_root(context)

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if launch_rank()[0] > 0:
            return
        lock = FolderLock(data_root(self._root or project_root(None)))
        lock.acquire(
            {
                "pid": os.getpid(),
                "command": " ".join(sys.argv) or "kedro run",
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "pipelines": run_params.get("pipeline_names") or run_params.get("pipeline_name"),
            }
        )
        self._lock = lock

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._release()

    @hook_impl
    def on_pipeline_error(self) -> None:
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class MissingInputError(RuntimeError):
    """An input of the requested pipeline does not exist yet."""


def missing_input_line(name: str, where: str | None) -> str:
    """``  - model_checkpoint (<path>): written by the `training` pipeline``."""
    # lazy: importing Kedro's project module sets up logging; a Kedro session has by now
    from kedro.framework.project import pipelines

    producer = next(
        (p for p in STAGE_PIPELINES if p in pipelines and name in pipelines[p].all_outputs()),
        None,
    )
    at = f" ({where})" if where else ""
    if producer is None:
        return f"  - {name}{at}: no pipeline of this project writes it; check the catalog"
    return f"  - {name}{at}: written by the `{producer}` pipeline"


class MissingInputHooks:
    """Refuse a run whose inputs an earlier pipeline has not written yet, saying which.

    ``kedro run --pipelines=evaluation`` on a fresh clone would otherwise fail deep in a
    node with a missing-file error (and Kedro's advice to repeat the command).
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        if launch_rank()[0] > 0:
            return
        missing = [
            name
            for name in sorted(pipeline.inputs())
            if not name.startswith("params:")
            and name != "parameters"
            and name in catalog
            and not catalog.exists(name)
        ]
        if missing:
            lines = [missing_input_line(name, catalog_location(catalog, name)) for name in missing]
            raise MissingInputError(
                "this pipeline's inputs do not exist yet:\n"
                + "\n".join(lines)
                + "\nRun `kedro run --pipelines=train` first (the whole job), or the "
                "pipelines named above if the earlier stages are done."
            )


class IngestionVerdictError(RuntimeError):
    """The tables a run would read come from a failed (or unfinished) ingestion."""


def check_ingestion_verdict(catalog: DataCatalog) -> None:
    """Refuse tables that the last ingestion did not pass.

    Raises:
        IngestionVerdictError: The report is missing, says the validation failed, or
            its fingerprint differs from the tables' (an ingestion that stopped between
            writing them); the message says what to fix and to re-run ``data_ingestion``.
    """
    where = catalog_location(catalog, INGESTION_REPORT) or INGESTION_REPORT
    rerun = "kedro run --pipelines data_ingestion (same --env and DQE_DATA_ROOT)"
    if not all(name in catalog and catalog.exists(name) for name in INGESTION_TABLES):
        return  # nothing to judge: MissingInputHooks names what is missing
    if INGESTION_REPORT not in catalog or not catalog.exists(INGESTION_REPORT):
        raise IngestionVerdictError(
            f"no ingestion report at {where}: the tables were never validated. Run {rerun} first."
        )
    report = catalog.load(INGESTION_REPORT)
    if report.get("verdict", PASSED) != PASSED:
        problems = [line for p in report.get("problems", []) for line in p.splitlines()[:1]]
        quarantine = catalog_location(catalog, "quarantine")
        raise IngestionVerdictError(
            f"the last ingestion failed validation ({where}): "
            + "; ".join(problems)
            + f". Fix the data (every rejected row is in {quarantine}) "
            f"or data.max_rejected_fraction, then re-run {rerun}."
        )
    images, triplets = (catalog.load(name) for name in INGESTION_TABLES)
    found = dataset_fingerprint(images, triplets)
    if found != report.get("fingerprint"):
        tables = ", ".join(str(catalog_location(catalog, name)) for name in INGESTION_TABLES)
        raise IngestionVerdictError(
            f"the tables ({tables}) have fingerprint {found}, but the ingestion report "
            f"{where} judged {report.get('fingerprint')}: the last ingestion did not "
            f"finish. Re-run {rerun}."
        )


class IngestionVerdictHooks:
    """No stage consumes tables from an ingestion that failed validation.

    ``data_ingestion`` writes ``images`` and ``triplets`` only after its verdict passed
    and records the verdict with the tables' fingerprint in ``ingestion_report``. A run
    whose pipelines read those tables without producing them (``--pipelines
    embedding_extraction``, ``training``, ...) is checked before its first node, and
    before kedro-mlflow opens a run.
    """

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        if not set(INGESTION_TABLES) & pipeline.inputs():
            return
        check_ingestion_verdict(catalog)
