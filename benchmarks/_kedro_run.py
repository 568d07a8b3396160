"""``kedro run`` as a measured child process, in a work folder of its own.

Shared by ``gpu_report.py smoke`` (``_real_data_smoke.py``) and ``rehearse.py``: the work
folder's data root and MLflow store (:class:`Workspace`), the parameters that point a
real-data environment at the work folder's data, one ``kedro run`` with its wall time and
peak RSS (:func:`run_kedro`), and the ``resources/<node>.*`` metrics that the project's
``ResourceHooks`` log to the MLflow run (:func:`node_resources`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The repository root: ``kedro run`` runs there.
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Workspace:
    """A work folder: its own data root, MLflow store and artifact folder."""

    work: Path

    @property
    def data_root(self) -> Path:
        return self.work / "data"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.work / 'mlflow.db').as_posix()}"

    def raw(self, benchmark: str) -> Path:
        """Where ``benchmark``'s annotations and images lie (``01_raw``)."""
        return self.data_root / benchmark / "01_raw"

    def env(self) -> dict[str, str]:
        """The environment of a ``kedro run`` that writes only under the work folder."""
        return {
            **os.environ,
            "DQE_DATA_ROOT": str(self.data_root),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "DQE_MLFLOW_ARTIFACTS": (self.work / "mlartifacts").as_uri(),
            "HF_HUB_OFFLINE": "1",
            "KEDRO_DISABLE_TELEMETRY": "true",
        }

    def data_params(self, benchmark: str) -> dict[str, Any]:
        """The data roots, passed explicitly so that a user's ``conf/local`` (merged over
        the benchmark environments) cannot point the run at the real data."""
        raw = self.raw(benchmark)
        return {
            f"data.{benchmark}.annotation_root": str(raw / "annotations"),
            f"data.{benchmark}.image_root": str(raw / "images"),
        }


def nested(params: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``: the form of ``run.params`` in a run config."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@dataclass(frozen=True)
class ChildRun:
    """One finished ``kedro run``: its command, wall time, peak RSS and log."""

    command: list[str]
    seconds: float
    peak_rss_bytes: int
    returncode: int
    log: Path

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def run_kedro(
    ws: Workspace,
    benchmark: str,
    pipelines: str,
    params: dict[str, Any],
    log: Path,
    check: bool = True,
) -> ChildRun:
    """``kedro run --env <benchmark> --pipelines <pipelines>`` with ``params``.

    The parameters go in a run config next to the log (``<log>.yml``, ``kedro run
    --config``): lists and paths need no quoting there, and the file repeats the run.

    Args:
        check: Raise ``SystemExit`` with the log's tail when the run fails.

    Returns:
        The run's command, wall time, peak resident memory (of the child and the
        processes it waited for, from ``wait4``), exit status and log.
    """
    import yaml

    config = log.with_suffix(".yml")
    log.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"run": {"params": nested(params)}}, sort_keys=False))
    cmd = [sys.executable, "-m", "kedro", "run", "--env", benchmark, "--pipelines", pipelines]
    cmd += ["--config", str(config)]
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ws.env(), stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    run = ChildRun(cmd, seconds, usage.ru_maxrss * 1024, proc.returncode, log)
    if check and run.returncode != 0:
        raise SystemExit(
            f"kedro run --env {benchmark} --pipelines {pipelines} failed "
            f"(exit {run.returncode}); log {log}:\n{run.tail()}"
        )
    return run


def latest_run(ws: Workspace, benchmark: str) -> tuple[str, dict[str, float]]:
    """Run id and metrics of the newest MLflow run of ``benchmark``'s experiment."""
    import mlflow

    mlflow.set_tracking_uri(ws.tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=[f"dqe_cir_{benchmark}"], order_by=["start_time DESC"], max_results=1
    )
    run_id = str(runs.run_id.iloc[0])
    return run_id, dict(mlflow.get_run(run_id).data.metrics)


def node_resources(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """``resources/<namespace>.<node>.<what>`` metrics -> ``{node: {what: value}}``."""
    nodes: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("resources/"):
            node, what = key.removeprefix("resources/").rsplit(".", 1)
            nodes.setdefault(node, {})[what] = value
    return nodes


def node_timeline(ws: Workspace, run_id: str) -> tuple[float, float, list[tuple[float, str]]]:
    """When the MLflow run started and ended, and when each ``resources/*`` metric was
    logged (epoch seconds; the node's end, or the end of a save): the order the nodes
    ran in and how long each took from the previous one's end."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(ws.tracking_uri)
    run = client.get_run(run_id)
    events = [
        (m.timestamp / 1000, key.removeprefix("resources/").rsplit(".", 1)[0])
        for key in run.data.metrics
        if key.startswith("resources/")
        for m in client.get_metric_history(run_id, key)
    ]
    end = run.info.end_time or max((t for t, _ in events), default=0.0) * 1000
    return run.info.start_time / 1000, end / 1000, sorted(events)
