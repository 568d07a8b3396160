"""Wall time, save time and peak memory of every node, as log lines and MLflow metrics
(``resources/<node>.*``: what ``benchmarks/gpu_report.py smoke`` reports)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.pipeline.node import Node

from dqe_cir_pipeline.launch import peak_rss_bytes

logger = logging.getLogger(__name__)


def _gpu_note(values: dict[str, float]) -> str:
    return f", peak GPU {values['peak_gpu_gib']:.2f} GiB" if "peak_gpu_gib" in values else ""


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
            _gpu_note(values),
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
            "node %s: saving %s took %.1f s%s", node.name, dataset_name, seconds, _gpu_note(values)
        )
        self._log(node, values)
