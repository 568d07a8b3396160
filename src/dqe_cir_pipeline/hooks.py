"""Hooks: provenance tags, rank-0-only writes under ``torchrun``, per-node time and memory.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs parameters and the
``Mlflow*Dataset`` outputs. ``ProvenanceHooks`` adds the tags a reader of the MLflow UI
needs to trust a number: the git commit of the code and a fingerprint of the data it saw.
Nodes never talk to MLflow; only this module and kedro-mlflow do.

``DistributedHooks``: ``torchrun --nproc_per_node=N -m kedro run --pipelines training``
runs the whole Kedro session in every rank. Rank 0 is the run: it alone writes datasets
and talks to MLflow (``settings.py`` does not even register kedro-mlflow on the other
ranks). The other ranks load inputs as usual and keep their outputs in memory.

``ResourceHooks``: wall time, save time and peak memory of every node, as log lines and
``resources/<node>.*`` MLflow metrics (what ``benchmarks/gpu_smoke.py`` reports).

``RunLockHooks``: one ``kedro run`` at a time per data root (a file lock the kernel
drops with the process).

``IngestionVerdictHooks``: a run that reads ingestion's tables without producing them
is refused before its first node when the last ingestion failed validation, or when the
tables are not the ones its report judged.

``MlflowStoreHooks``: the sqlite tracking store and the experiment are created under a
file lock next to the database (two runs starting on a fresh store do not race), every
run is tagged with its host and PID, and runs a killed process left RUNNING are marked
FAILED by the next start.

``SummaryHooks``: a run that evaluated ends with its headline: trained vs zero-shot vs
untrained vs text-blind, R@10 per edit type, the MLflow run id and the output paths.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset, DataCatalog
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

from dqe_cir_pipeline.io_utils import FolderLock, exclusive_lock
from dqe_cir_pipeline.launch import (
    PROJECT_ROOT,
    data_root,
    launch_rank,
    peak_rss_bytes,
    process_alive,
    process_start_ticks,
)

logger = logging.getLogger(__name__)

#: Node outputs whose ``fingerprint`` entry becomes the ``dataset_fingerprint`` tag.
FINGERPRINT_OUTPUT = "ingestion_report"
#: The trained checkpoint: its dict records the MLflow run that trained it, and a run
#: that evaluates it is linked back to that run.
CHECKPOINT = "model_checkpoint"
#: Benchmarks whose settings sit side by side in the ``data`` block.
BENCHMARKS = ("synthetic", "fashioniq", "cirr")


def git_commit(path: Path) -> str:
    """Return the commit of the checkout at ``path`` (with ``-dirty`` when modified)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def flat_params(prefix: str, value: Any) -> dict[str, Any]:
    """A typed parameter block as one ``prefix.field[.field]`` entry per leaf."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flat_params(f"{prefix}.{key}", item))
    return out


def run_name(pipelines: str, overrides: dict[str, Any]) -> str:
    """``train lr=0.0001 seed=1``: what ran and what the command line changed (the last
    part of each ``--params`` key)."""
    changed = flat_params("", overrides)
    parts = [f"{key.rsplit('.', 1)[-1]}={value}" for key, value in sorted(changed.items())]
    return " ".join([pipelines, *parts])


class ProvenanceHooks:
    """Tag the active MLflow run with the git commit and the data fingerprint, and log the
    typed parameter blocks one leaf per MLflow param (``training.optim.lr``).

    kedro-mlflow flattens parameter *dicts*; the blocks Kedro validated into dataclasses
    reach it as objects, which it would log as a single string.
    """

    @hook_impl
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        typed = {
            name.removeprefix("params:"): value
            for name, value in inputs.items()
            if name.startswith("params:") and dataclasses.is_dataclass(value)
        }
        if not typed:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        params: dict[str, Any] = {}
        for name, value in typed.items():
            params.update(flat_params(name, value))
        mlflow.log_params(active_benchmark_params(params))
        checkpoint = inputs.get(CHECKPOINT)
        if isinstance(checkpoint, dict):
            link_training_run(mlflow, checkpoint)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return
        pipelines = ",".join(
            run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
        )
        mlflow.set_tags(
            {
                "git_commit": git_commit(PROJECT_ROOT),
                "kedro_env": str(run_params.get("env") or "local"),
                "kedro_pipeline": pipelines,
                "mlflow.runName": run_name(pipelines, run_params.get("runtime_params") or {}),
                **readable_kedro_tags(run_params, sys.argv),
            }
        )
        # kedro-mlflow's "run_id" tag (every run param with a value) is Kedro's session id,
        # not the MLflow run id: renamed to kedro_session_id above
        if run_params.get("run_id"):
            mlflow.MlflowClient().delete_tag(run.info.run_id, "run_id")
        # the UI opens an experiment of this kind on its runs, not on the GenAI views
        mlflow.MlflowClient().set_experiment_tag(
            run.info.experiment_id, "mlflow.experimentKind", "custom_model_development"
        )

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, data: Any) -> None:
        """Record the MLflow run in the checkpoint dict before it is written."""
        if dataset_name != CHECKPOINT or not isinstance(data, dict):
            return
        import mlflow

        run = mlflow.active_run()
        if run is not None:
            data.setdefault("provenance", {})["mlflow_run_id"] = run.info.run_id

    @hook_impl
    def after_node_run(self, outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
        report = outputs.get(FINGERPRINT_OUTPUT)
        if not isinstance(report, dict) or "fingerprint" not in report:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        mlflow.set_tag("dataset_fingerprint", str(report["fingerprint"]))
        log_dataset_input(mlflow, report, inputs.get("params:data"))


def readable_kedro_tags(run_params: dict[str, Any], argv: list[str]) -> dict[str, str]:
    """Tags that replace kedro-mlflow's unreadable ones: ``runner`` as a class name (not
    an object's repr), ``kedro_session_id`` (kedro-mlflow calls it ``run_id``, which is
    not the MLflow run id), and ``kedro_command`` as typed when Kedro's CLI started the
    run (kedro-mlflow rebuilds it with the deprecated ``--pipeline`` flag)."""
    tags: dict[str, str] = {}
    runner = str(run_params.get("runner") or "")
    match = re.match(r"<([\w.]+) object at", runner)
    if runner:
        tags["runner"] = (match.group(1) if match else runner).rsplit(".", 1)[-1]
    if run_params.get("run_id"):  # Kedro's name for the session id in run_params
        tags["kedro_session_id"] = str(run_params["run_id"])
    args = argv[1:]
    if args[:1] == ["run"]:
        tags["kedro_command"] = "kedro " + shlex.join(args)
    return tags


def active_benchmark_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the settings of the benchmarks this run does not use
    (``data.cirr.*`` in a synthetic run)."""
    active = params.get("data.benchmark")
    if active is None:
        return params
    inactive = tuple(f"data.{b}." for b in BENCHMARKS if b != active)
    return {k: v for k, v in params.items() if not k.startswith(inactive)}


def log_dataset_input(mlflow: Any, report: dict[str, Any], data_cfg: Any) -> None:
    """The ingested benchmark as the run's MLflow dataset input: name, digest (the data
    fingerprint) and source (its annotation folder), shown in the run's Datasets panel."""
    from mlflow.data.dataset_source_registry import get_registered_sources
    from mlflow.data.meta_dataset import MetaDataset

    benchmark = str(getattr(data_cfg, "benchmark", report.get("dataset", "benchmark")))
    section = getattr(data_cfg, benchmark, None)
    root = getattr(section, "root", None) or getattr(section, "annotation_root", None) or "."
    try:
        # the local-folder source, named directly (resolving a file URI warns that two
        # registered sources could read it)
        local = next(
            c for c in get_registered_sources() if c.__name__ == "LocalArtifactDatasetSource"
        )
        dataset = MetaDataset(
            source=local(Path(root).resolve().as_uri()),
            name=benchmark,
            digest=str(report["fingerprint"])[:36],
        )
        mlflow.log_input(dataset, context="ingested")
    except Exception as err:  # noqa: BLE001 - provenance must never fail a run
        logger.warning("could not log the dataset input to MLflow: %s", err)


def link_training_run(mlflow: Any, checkpoint: dict[str, Any]) -> None:
    """A run evaluating a checkpoint another run trained: tag it with that run and the
    checkpoint, and copy the training run's parameters it does not have itself."""
    trained_by = checkpoint.get("provenance", {}).get("mlflow_run_id")
    run = mlflow.active_run()
    if not trained_by or run is None:
        return
    mlflow.set_tags(
        {
            "training_run_id": trained_by,
            "checkpoint_epoch": str(checkpoint.get("epoch", "")),
            "checkpoint_data_fingerprint": str(checkpoint.get("data", {}).get("fingerprint", "")),
        }
    )
    if trained_by == run.info.run_id:
        return
    client = mlflow.MlflowClient()
    try:
        trained = client.get_run(trained_by).data.params
    except Exception as err:  # noqa: BLE001 - the training run may live in another store
        logger.warning("training run %s not found in this MLflow store: %s", trained_by, err)
        return
    mine = client.get_run(run.info.run_id).data.params
    missing = {k: v for k, v in trained.items() if k not in mine}
    if missing:
        mlflow.log_params(missing)


class RankLocalDataset(AbstractDataset[Any, Any]):
    """A catalog entry as a rank other than 0 sees it: loads as usual, saves to memory.

    Args:
        inner: the configured dataset (read from when nothing was saved in this run).
        name: the catalog name (for messages).
        rank: this process's rank.
    """

    def __init__(self, inner: AbstractDataset[Any, Any], name: str, rank: int) -> None:
        self._inner = inner
        self._name = name
        self._rank = rank
        self._saved = False
        self._data: Any = None

    def load(self) -> Any:
        return self._data if self._saved else self._inner.load()

    def save(self, data: Any) -> None:
        logger.debug("rank %d: keeping %s in memory (rank 0 writes it)", self._rank, self._name)
        self._data, self._saved = data, True

    def _exists(self) -> bool:
        return self._saved or self._inner.exists()

    def _describe(self) -> dict[str, Any]:
        return {"rank": self._rank, "inner": type(self._inner).__name__}


def ddp_pipeline_nodes() -> set[str]:
    """Nodes that may run under ``torchrun``: training, and evaluation after it."""
    from dqe_cir_pipeline.pipelines import evaluation, training

    allowed = training.create_pipeline() + evaluation.create_pipeline()
    return {n.name for n in allowed.nodes}


class DistributedHooks:
    """Make a ``torchrun`` launch of Kedro write once, from rank 0."""

    @hook_impl
    def after_catalog_created(self, catalog: DataCatalog) -> None:
        rank, world = launch_rank()
        if rank == 0:
            return
        catalog_logger = logging.getLogger("kedro.io.data_catalog")
        level = catalog_logger.level
        catalog_logger.setLevel(logging.ERROR)  # silence one "Replacing dataset" per entry
        try:
            for name in catalog.keys():
                if name == "parameters" or name.startswith("params:"):
                    continue
                catalog[name] = RankLocalDataset(catalog.get(name), name, rank)
        finally:
            catalog_logger.setLevel(level)
        logger.info(
            "rank %d/%d: datasets are read-only here; rank 0 writes them and logs to MLflow",
            rank,
            world,
        )

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        rank, world = launch_rank()
        if world == 1:
            return
        extra = sorted({n.name for n in pipeline.nodes} - ddp_pipeline_nodes())
        if extra:
            raise RuntimeError(
                f"under torchrun (WORLD_SIZE={world}) only the training and evaluation "
                "pipelines run; "
                f"this run also has {extra}. Run the earlier stages in one process first "
                "(kedro run --pipelines data_ingestion, embedding_extraction, negative_mining), "
                "then torchrun ... -m kedro run --pipelines training"
            )


class ResourceHooks:
    """Wall time and peak memory of every node: a log line and, in an MLflow run, metrics.

    ``resources/<node>.seconds`` (the node function), ``resources/<node>.save_seconds``
    (writing its outputs; logged when it takes a second or more: the feature cache
    computes the features while it is saved), ``resources/<node>.peak_gpu_gib`` (CUDA
    memory allocated by tensors at the peak of the node and its saves, when CUDA is in
    use) and ``resources/<node>.peak_rss_gib`` (the process's peak resident memory so
    far: it only grows, so read it as "the run had reached this by the end of the node").
    """

    #: Saves shorter than this are not worth a metric.
    MIN_SAVE_SECONDS = 1.0

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._save_start: dict[str, float] = {}
        self._saved: dict[str, float] = {}

    @staticmethod
    def _cuda() -> Any:
        torch = sys.modules.get("torch")  # never import torch (or start CUDA) just to measure
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return torch.cuda

    def _memory(self) -> dict[str, float]:
        values = {"peak_rss_gib": peak_rss_bytes() / 2**30}
        cuda = self._cuda()
        if cuda is not None:
            values["peak_gpu_gib"] = cuda.max_memory_allocated() / 2**30
        return values

    @staticmethod
    def _log(node: Node, values: dict[str, float]) -> None:
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_metrics({f"resources/{node.name}.{k}": float(v) for k, v in values.items()})

    @hook_impl
    def before_node_run(self, node: Node) -> None:
        cuda = self._cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._saved[node.name] = 0.0
        self._start[node.name] = time.perf_counter()

    @hook_impl
    def after_node_run(self, node: Node) -> None:
        values = {
            "seconds": time.perf_counter() - self._start.pop(node.name, time.perf_counter()),
            **self._memory(),
        }
        logger.info(
            "node %s: %.1f s, peak RSS %.2f GiB%s",
            node.name,
            values["seconds"],
            values["peak_rss_gib"],
            f", peak GPU {values['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in values else "",
        )
        self._log(node, values)

    @hook_impl
    def before_dataset_saved(self, dataset_name: str, node: Node) -> None:
        self._save_start[dataset_name] = time.perf_counter()

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, node: Node) -> None:
        seconds = time.perf_counter() - self._save_start.pop(dataset_name, time.perf_counter())
        total = self._saved.get(node.name, 0.0) + seconds
        self._saved[node.name] = total
        if seconds < self.MIN_SAVE_SECONDS:
            return
        values = {"save_seconds": total, **self._memory()}
        logger.info(
            "node %s: saving %s took %.1f s%s",
            node.name,
            dataset_name,
            seconds,
            f", peak GPU {values['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in values else "",
        )
        self._log(node, values)


#: Rows and columns of the end-of-run headline (metrics the evaluation writes).
HEADLINE_MODELS = ("dqe_cir", "zero_shot", "untrained", "text_blind")
HEADLINE_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "avg")
#: Catalog entries whose location the headline names, when the run produced them.
HEADLINE_PATHS = ("model_checkpoint", "evaluation_summary", "query_rankings", "training_history")


def headline(summary: dict[str, Any]) -> str:
    """The evaluation summary as a small text table: models x main metrics, then R@10 per
    edit type when the benchmark has them."""
    models = [m for m in HEADLINE_MODELS if m in summary["models"]]
    rows = [
        f"{summary['dataset']} {summary['split']}: {summary['queries']} queries, "
        f"gallery {summary['gallery']}"
    ]
    rows.append(f"{'model':<12}" + "".join(f"{m:>17}" for m in HEADLINE_METRICS))
    for name in models:
        values = summary["models"][name]
        cells = "".join(f"{values.get(m, float('nan')):>17.1f}" for m in HEADLINE_METRICS)
        rows.append(f"{name:<12}{cells}")
    edit_types = sorted(
        {k.split("/")[0] for k in summary["models"][models[0]] if k.endswith("/recall@10")}
    )
    if edit_types:
        rows.append(f"{'R@10 by edit':<12}" + "".join(f"{e:>17}" for e in edit_types))
        for name in models:
            values = summary["models"][name]
            cells = "".join(
                f"{values.get(f'{e}/recall@10', float('nan')):>17.1f}" for e in edit_types
            )
            rows.append(f"{name:<12}{cells}")
    weights = summary["models"].get("dqe_cir", {})
    attrs = ("base", "color", "shape")
    weight_rows = [e for e in edit_types if f"weights/{e}/color" in weights]
    if weight_rows:  # the learned attribute weights: do they follow the text?
        rows.append(f"{'weights':<12}" + "".join(f"{a:>17}" for a in attrs) + "  (dqe_cir)")
        for e in weight_rows:
            cells = "".join(f"{weights[f'weights/{e}/{a}']:>17.2f}" for a in attrs)
            rows.append(f"{e + ' edits':<12}{cells}")
    return "\n".join(rows)


def _is_server(tracking_uri: str) -> bool:
    """A tracking server (it serves the UI itself), not a local store."""
    return tracking_uri.startswith(("http://", "https://"))


def run_page_url(tracking_uri: str, host: str, port: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, in its "Model training" view (MLflow 3 opens on its
    GenAI view unless the address says ``workflowType=machine_learning``).

    A tracking server (``http(s)://``) serves the UI itself; a local store (sqlite, files)
    is served by ``kedro mlflow ui`` on the ``ui`` host and port of ``mlflow.yml``.
    """
    if _is_server(tracking_uri):
        base = tracking_uri.rstrip("/")
    else:
        base = f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


class SummaryHooks:
    """End a run that evaluated with its headline: the table, the MLflow run, the paths.

    Two steps, so that the headline is the last thing the run prints: the summary is
    built first among the ``after_pipeline_run`` hooks, while kedro-mlflow's run is still
    open (the table becomes the run's description and the run id can be named), and is
    printed last, after kedro-mlflow has logged and registered the model and closed the
    run (:class:`SummaryPrintHooks`, registered after this one in ``settings.py``).
    """

    def __init__(self) -> None:
        self.pending: str | None = None
        self.ui = ("127.0.0.1", "5000")

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        ui = _mlflow_settings(context).get("ui") or {}
        self.ui = (str(ui.get("host", self.ui[0])), str(ui.get("port", self.ui[1])))

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        self.pending = None
        if "evaluation_summary" not in pipeline.all_outputs() or launch_rank()[0] > 0:
            return
        lines = [headline(catalog.load("evaluation_summary"))]
        import mlflow

        run = mlflow.active_run()
        if run is not None:  # the table is also the run's description in the MLflow UI
            mlflow.set_tag("mlflow.note.content", f"```\n{lines[0]}\n```")
            uri = mlflow.get_tracking_uri()
            lines.append(f"MLflow run {run.info.run_id} ({uri})")
            page = run_page_url(uri, *self.ui, run.info.experiment_id, run.info.run_id)
            start = "" if _is_server(uri) else "`kedro mlflow ui`, then "
            lines.append(f"MLflow run page: {start}{page}")
        for name in HEADLINE_PATHS:
            where = _location(catalog, name)
            if where:
                lines.append(f"{name}: {where}")
        self.pending = "\n".join(lines)


class SummaryPrintHooks:
    """Print the summary :class:`SummaryHooks` built, after every other hook has run."""

    def __init__(self, summary: SummaryHooks) -> None:
        self.summary = summary

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        if self.summary.pending is not None:
            logger.info("run summary\n%s", self.summary.pending)
            self.summary.pending = None


def _location(catalog: DataCatalog, name: str) -> str | None:
    """Where a catalog entry writes (its ``filepath``), if it has one."""
    if name not in catalog:
        return None
    described = catalog.get(name)._describe()  # noqa: SLF001 - Kedro's own description
    inner = described.get("dataset") if isinstance(described.get("dataset"), dict) else {}
    return described.get("filepath") or inner.get("filepath")


class RunLockHooks:
    """One ``kedro run`` at a time per data root (``DQE_DATA_ROOT``).

    Two runs writing one data root mix their outputs (one run evaluating the checkpoint
    the other just wrote). The lock is taken when a pipeline starts and released when it
    ends or fails; a killed run's lock goes with its process. Under ``torchrun`` rank 0
    holds it for all ranks (the others write nothing).
    """

    def __init__(self) -> None:
        self._lock: FolderLock | None = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        if launch_rank()[0] > 0:
            return
        lock = FolderLock(data_root())
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
            lines = [missing_input_line(name, _location(catalog, name)) for name in missing]
            raise MissingInputError(
                "this pipeline's inputs do not exist yet:\n"
                + "\n".join(lines)
                + "\nRun `kedro run --pipelines=train` first (the whole job), or the "
                "pipelines named above if the earlier stages are done."
            )


class MissingInputError(RuntimeError):
    """An input of the requested pipeline does not exist yet."""


#: Stage pipelines in run order: the first that writes a dataset is named as its source.
STAGE_PIPELINES = (
    "data_ingestion",
    "embedding_extraction",
    "negative_mining",
    "training",
    "evaluation",
    "pretraining",
)


def missing_input_line(name: str, where: str | None) -> str:
    """``  - model_checkpoint (<path>): written by the `training` pipeline``."""
    from kedro.framework.project import pipelines

    producer = next(
        (p for p in STAGE_PIPELINES if p in pipelines and name in pipelines[p].all_outputs()),
        None,
    )
    at = f" ({where})" if where else ""
    if producer is None:
        return f"  - {name}{at}: no pipeline of this project writes it; check the catalog"
    return f"  - {name}{at}: written by the `{producer}` pipeline"


class IngestionVerdictError(RuntimeError):
    """The tables a run would read come from a failed (or unfinished) ingestion."""


#: Ingestion's tables and the report that judged them (catalog names).
INGESTION_TABLES = ("images", "triplets")
INGESTION_REPORT = "ingestion_report"


def check_ingestion_verdict(catalog: DataCatalog) -> None:
    """Refuse tables that the last ingestion did not pass.

    Raises:
        IngestionVerdictError: The report is missing, says the validation failed, or
            its fingerprint differs from the tables' (an ingestion that stopped between
            writing them); the message says what to fix and to re-run ``data_ingestion``.
    """
    from dqe_cir_pipeline.data_sources.common import dataset_fingerprint
    from dqe_cir_pipeline.pipelines.data_ingestion.nodes import PASSED

    where = _location(catalog, INGESTION_REPORT) or INGESTION_REPORT
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
        raise IngestionVerdictError(
            f"the last ingestion failed validation ({where}): "
            + "; ".join(problems)
            + f". Fix the data (every rejected row is in {_location(catalog, 'quarantine')}) "
            f"or data.max_rejected_fraction, then re-run {rerun}."
        )
    images, triplets = (catalog.load(name) for name in INGESTION_TABLES)
    found = dataset_fingerprint(images, triplets)
    if found != report.get("fingerprint"):
        raise IngestionVerdictError(
            f"the tables ({_location(catalog, 'images')}, {_location(catalog, 'triplets')}) "
            f"have fingerprint {found}, but the ingestion report {where} judged "
            f"{report.get('fingerprint')}: the last ingestion did not finish. Re-run {rerun}."
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


class IngestionArtifactHooks:
    """The quarantine table and the ingestion report as MLflow artifacts (``ingestion/``).

    Logged as soon as each is saved, so a run whose validation fails still has both:
    ``validate_ingestion`` writes the report (verdict, problems, counts) and its metrics
    before ``publish_tables`` fails the run.
    """

    ARTIFACTS = ("quarantine", INGESTION_REPORT)

    def __init__(self) -> None:
        self._catalog: DataCatalog | None = None

    @hook_impl
    def after_catalog_created(self, catalog: DataCatalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        if dataset_name not in self.ARTIFACTS or self._catalog is None or launch_rank()[0] > 0:
            return
        import mlflow

        where = _location(self._catalog, dataset_name)
        if mlflow.active_run() is None or not where or not Path(where).is_file():
            return
        mlflow.log_artifact(where, artifact_path="ingestion")


#: Tags that say which process a run belongs to (see ``MlflowStoreHooks``).
TAG_HOST, TAG_PID, TAG_PID_START = "dqe.host", "dqe.pid", "dqe.pid_start"
TAG_ABANDONED = "dqe.abandoned"


def _mlflow_settings(context: Any) -> dict[str, Any]:
    """The project's ``mlflow.yml`` as kedro-mlflow will read it (registering its pattern)."""
    from kedro.config import MissingConfigException

    loader = context.config_loader
    if "mlflow" not in loader.config_patterns:
        loader.config_patterns.update({"mlflow": ["mlflow*", "mlflow*/**", "**/mlflow*"]})
    try:
        return dict(loader["mlflow"])
    except MissingConfigException:  # no mlflow.yml: kedro-mlflow's defaults, nothing to do
        return {}


def _artifact_uri(location: str | None, project_path: Path) -> str | None:
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
    from mlflow import MlflowClient

    def prepare() -> list[str]:
        client = MlflowClient(tracking_uri=tracking_uri)
        client.search_experiments(max_results=1)  # creates and migrates the tables
        if experiment and client.get_experiment_by_name(experiment) is None:
            client.create_experiment(experiment, artifact_location=artifact_location)
        return fail_abandoned_runs(client)

    if not tracking_uri.startswith("sqlite:///"):
        return prepare()
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    with exclusive_lock(db.with_name(db.name + ".lock")):
        return prepare()


def fail_abandoned_runs(client: Any) -> list[str]:
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


#: MLflow's switch for system metrics; unset, the project turns them on.
SYSTEM_METRICS_ENV = "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING"


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
    def after_context_created(self, context: Any) -> None:
        if launch_rank()[0] > 0:
            return
        settings = _mlflow_settings(context)
        uri = (settings.get("server") or {}).get("mlflow_tracking_uri")
        if not uri:
            return
        if os.environ.get(SYSTEM_METRICS_ENV) is None:
            # CPU, memory, disk, network (and GPU with nvidia-ml-py) of the run, sampled
            # every 10 s into the run's "System metrics" tab; MLflow's own switch wins
            import mlflow

            mlflow.enable_system_metrics_logging()
        experiment = (settings.get("tracking") or {}).get("experiment") or {}
        location = (experiment.get("create_experiment_kwargs") or {}).get("artifact_location")
        prepare_tracking_store(
            str(uri), experiment.get("name"), _artifact_uri(location, Path(context.project_path))
        )

    @hook_impl
    def before_pipeline_run(self) -> None:
        if launch_rank()[0] > 0:
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        start = process_start_ticks(os.getpid())
        mlflow.set_tags(
            {
                TAG_HOST: socket.gethostname(),
                TAG_PID: str(os.getpid()),
                **({TAG_PID_START: str(start)} if start is not None else {}),
            }
        )
