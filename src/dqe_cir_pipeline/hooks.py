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
``resources.<node>.*`` MLflow metrics (what ``benchmarks/gpu_smoke.py`` reports).

``RunLockHooks``: one ``kedro run`` at a time per data root (a file lock the kernel
drops with the process).

``SummaryHooks``: a run that evaluated ends with its headline: trained vs zero-shot vs
untrained vs text-blind, R@10 per edit type, the MLflow run id and the output paths.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset, DataCatalog
from kedro.pipeline import Pipeline
from kedro.pipeline.node import Node

from dqe_cir_pipeline.io_utils import FolderLock
from dqe_cir_pipeline.launch import PROJECT_ROOT, data_root, launch_rank, peak_rss_bytes

logger = logging.getLogger(__name__)

#: Node outputs whose ``fingerprint`` entry becomes the ``dataset_fingerprint`` tag.
FINGERPRINT_OUTPUT = "ingestion_report"


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
        mlflow.log_params(params)

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
            }
        )
        # the UI opens an experiment of this kind on its runs, not on the GenAI views
        mlflow.MlflowClient().set_experiment_tag(
            run.info.experiment_id, "mlflow.experimentKind", "custom_model_development"
        )

    @hook_impl
    def after_node_run(self, outputs: dict[str, Any]) -> None:
        report = outputs.get(FINGERPRINT_OUTPUT)
        if not isinstance(report, dict) or "fingerprint" not in report:
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tag("dataset_fingerprint", str(report["fingerprint"]))


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

    ``resources.<node>.seconds`` (the node function), ``resources.<node>.save_seconds``
    (writing its outputs; logged when it takes a second or more: the feature cache
    computes the features while it is saved), ``resources.<node>.peak_gpu_gib`` (CUDA
    memory allocated by tensors at the peak of the node and its saves, when CUDA is in
    use) and ``resources.<node>.peak_rss_gib`` (the process's peak resident memory so
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
            mlflow.log_metrics({f"resources.{node.name}.{k}": float(v) for k, v in values.items()})

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


class SummaryHooks:
    """End a run that evaluated with its headline: the table, the MLflow run, the paths.

    Runs first among the ``after_pipeline_run`` hooks, while kedro-mlflow's run is still
    open, so the run id can be named.
    """

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        if "evaluation_summary" not in pipeline.all_outputs() or launch_rank()[0] > 0:
            return
        lines = [headline(catalog.load("evaluation_summary"))]
        import mlflow

        run = mlflow.active_run()
        if run is not None:  # the table is also the run's description in the MLflow UI
            mlflow.set_tag("mlflow.note.content", f"```\n{lines[0]}\n```")
            lines.append(f"MLflow run {run.info.run_id} ({mlflow.get_tracking_uri()})")
        for name in HEADLINE_PATHS:
            where = _location(catalog, name)
            if where:
                lines.append(f"{name}: {where}")
        logger.info("run summary\n%s", "\n".join(lines))


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
