"""The MLflow tracking store, made safe for concurrent runs; runs a killed process left
RUNNING are failed; MLflow's system metrics on unless the user's variable says no.

The sqlite store and the experiment are created under a file lock next to the
database (two runs starting on a fresh store do not race), and every run is tagged with
its host and PID so that the next start can tell which RUNNING runs lost their process.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from kedro.framework.hooks import hook_impl

from dqe_cir_pipeline.hooks.project import mlflow_settings, project_root
from dqe_cir_pipeline.io_utils import exclusive_lock
from dqe_cir_pipeline.launch import launch_rank, process_alive, process_start_ticks

if TYPE_CHECKING:  # importing it sets up Kedro's logging; hooks only receive one
    from kedro.framework.context import KedroContext

logger = logging.getLogger(__name__)

#: Tags that say which process a run belongs to (see :class:`MlflowStoreHooks`).
TAG_HOST, TAG_PID, TAG_PID_START = "dqe.host", "dqe.pid", "dqe.pid_start"
TAG_ABANDONED = "dqe.abandoned"
#: MLflow's switch for system metrics; unset, the project turns them on.
SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


def artifact_uri(location: str | None, project_path: Path) -> str | None:
    """An experiment's artifact location as a URI (a bare path is taken from the project)."""
    if not location or "://" in location or location.startswith("file:"):
        return location
    return (project_path / location).resolve().as_uri()


def prepare_tracking_store(
    tracking_uri: str, experiment: str | None, artifact_location: str | None
) -> list[str]:
    """Create the tracking store and the experiment once, then fail abandoned runs.

    For an sqlite store this happens under an exclusive lock on ``<db>.lock``: two
    runs starting at once on a fresh database would otherwise both create the tables
    (an alembic error in the second) or both create the experiment.

    Args:
        tracking_uri: The MLflow tracking URI.
        experiment: The experiment kedro-mlflow will use (created here when missing).
        artifact_location: Its artifact location (a URI).

    Returns:
        The ids of the runs marked FAILED by :func:`fail_abandoned_runs`.
    """

    def prepare() -> list[str]:
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # creates and migrates the tables
        if experiment and client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=artifact_location)
        return fail_abandoned_runs(client)

    if not tracking_uri.startswith("sqlite:///"):
        return prepare()
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    with exclusive_lock(db.with_name(db.name + ".lock")):
        return prepare()


def fail_abandoned_runs(client: mlflow.MlflowClient) -> list[str]:
    """Mark FAILED the RUNNING runs of this host whose process is gone.

    A run killed with ``kill -9`` (or by the out-of-memory killer, or a lost machine)
    never closes its MLflow run; its ``dqe.host`` / ``dqe.pid`` / ``dqe.pid_start`` tags
    say which process owned it. Runs of other hosts and of live processes are left alone.

    Returns:
        The ids of the runs marked FAILED.
    """
    host = socket.gethostname()
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    runs = client.search_runs(
        experiments,
        filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'",
        max_results=1000,
    )
    failed = []
    for run in runs:
        tags = run.data.tags
        pid = int(tags.get(TAG_PID, "0") or 0)
        start = tags.get(TAG_PID_START)
        if process_alive(pid, int(start) if start else None):
            continue
        note = (
            f"process {pid} on {host} ended without closing this run (killed?); marked "
            f"FAILED at {time.strftime('%Y-%m-%d %H:%M:%S')} by the next run's start "
            f"(PID {os.getpid()})"
        )
        client.set_tag(run.info.run_id, TAG_ABANDONED, note)
        client.set_terminated(run.info.run_id, "FAILED")
        logger.warning("MLflow run %s: %s", run.info.run_id, note)
        failed.append(run.info.run_id)
    return failed


def process_tags() -> dict[str, str]:
    """This process's host, PID and start time, as run tags."""
    start = process_start_ticks(os.getpid())
    return {
        TAG_HOST: socket.gethostname(),
        TAG_PID: str(os.getpid()),
        **({TAG_PID_START: str(start)} if start is not None else {}),
    }


class MlflowStoreHooks:
    """A tracking store safe for concurrent runs, and no run left RUNNING by a dead process;
    MLflow's system metrics on (unless ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` says no).

    ``after_context_created`` runs before kedro-mlflow's own set-up (``tryfirst``): it
    creates the store's tables and the experiment under a file lock, then marks FAILED
    the runs a killed process of this host left RUNNING. ``before_pipeline_run`` tags
    the run kedro-mlflow opened with this host, PID and process start time. Rank 0 only
    (the other ranks of a ``torchrun`` launch have no MLflow run).
    """

    @hook_impl(tryfirst=True)
    def after_context_created(self, context: KedroContext) -> None:
        if launch_rank()[0] > 0:
            return
        settings = mlflow_settings(context)
        uri = (settings.get("server") or {}).get("mlflow_tracking_uri")
        if not uri:
            return
        if os.environ.get(SYSTEM_METRICS_ENV) is None:
            # CPU, memory, disk, network (and GPU with nvidia-ml-py) of the run, sampled
            # every 10 s into the run's "System metrics" tab; MLflow's own switch wins
            mlflow.enable_system_metrics_logging()
        experiment = (settings.get("tracking") or {}).get("experiment") or {}
        location = (experiment.get("create_experiment_kwargs") or {}).get("artifact_location")
        prepare_tracking_store(
            str(uri), experiment.get("name"), artifact_uri(location, project_root(context))
        )

    @hook_impl
    def before_pipeline_run(self) -> None:
        if launch_rank()[0] > 0 or mlflow.active_run() is None:
            return
        mlflow.set_tags(process_tags())
