"""The headline a run that evaluated ends with: trained vs zero-shot vs untrained vs
text-blind in the columns and per-group tables of the benchmark's protocol
(``BenchmarkProtocol.summary_metrics`` / ``breakdown``), the learned weights, the share
of negatives mining took from a fallback (a WARNING above ``FALLBACK_WARNING_SHARE``),
the MLflow run and the output paths.

The text is built by pure functions (:func:`headline`, :func:`mining_lines`,
:func:`run_summary`); the hooks only gather what they need from the catalog, the nodes'
metrics and MLflow, and print it last.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline

from dqe_cir_pipeline.data_sources.registry import benchmark
from dqe_cir_pipeline.hooks.project import catalog_location, mlflow_settings
from dqe_cir_pipeline.launch import launch_rank
from dqe_cir_pipeline.model.fallback import (
    FALLBACK_WARNING_SHARE,
    fallback_counts,
    fallback_share,
    fallback_warning,
)
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, SummaryBreakdown

if TYPE_CHECKING:  # importing it sets up Kedro's logging; hooks only receive one
    from kedro.framework.context import KedroContext

logger = logging.getLogger(__name__)

#: Rows of the end-of-run headline (the models the evaluation writes).
HEADLINE_MODELS = ("dqe_cir", "zero_shot", "untrained", "text_blind")
#: Catalog entries whose location the headline names, when the run produced them.
HEADLINE_PATHS = ("model_checkpoint", "evaluation_summary", "query_rankings", "training_history")
#: The evaluation's summary (a catalog entry): a run that writes it gets a headline.
SUMMARY = "evaluation_summary"
#: The learned attribute weights shown per edit type.
WEIGHT_ATTRIBUTES = ("base", "color", "shape")
#: Metric names of the mining summaries (``tracking``'s): the negative_mining pipeline's
#: pass, and training's refreshes.
INITIAL_MINING = "mining/initial."
REFRESH_MINING = "mining/refresh."
#: The mining strategy when the run's nodes did not say (``MiningConfig``'s default).
DEFAULT_STRATEGY = "midzone"
#: Width of a table cell, and the least width of the row labels.
CELL = 17
LABEL = 12
#: Shown when the evaluated split lists several valid targets per query (CIRCO's mAP@K
#: and recall over any valid target), next to the single-target protocol.
MULTI_TARGET_METRICS = ("map@5", "map@10", "map@25", "map@50", "recall_any@1", "recall_any@10")


def _row(label: str, cells: list[str], width: int = LABEL) -> str:
    return f"{label:<{width}}" + "".join(f"{c:>{CELL}}" for c in cells)


def short_name(metric: str) -> str:
    """``recall@10`` -> ``R@10``, ``recall_subset@1`` -> ``Rs@1``, ``recall_any@10`` ->
    ``R_any@10``, ``map@10`` -> ``mAP@10`` (a table title or column)."""
    for long, short in (("recall_subset@", "Rs@"), ("recall_any@", "R_any@"), ("map@", "mAP@")):
        metric = metric.replace(long, short)
    return metric.replace("recall@", "R@")


def summary_protocol(dataset: str) -> BenchmarkProtocol:
    """The protocol of the benchmark named ``dataset`` (the default one when none is)."""
    try:
        return benchmark(dataset).protocol
    except ValueError:  # not a registered benchmark: the plain columns, no breakdown
        return BenchmarkProtocol()


@dataclass(frozen=True)
class _Table:
    """One table of the headline: its title and column names, then labelled rows."""

    title: str
    columns: list[str]
    rows: list[tuple[str, list[str]]]
    note: str = ""


def _groups(results: Mapping[str, Mapping[str, float]], breakdown: SummaryBreakdown) -> list[str]:
    """The groups with a breakdown metric in any model's results, the pooled one last."""
    suffixes = tuple(f"/{m}" for m in breakdown.metrics)
    found = {k.split("/")[0] for r in results.values() for k in r if k.endswith(suffixes)}
    last = [breakdown.overall] if breakdown.overall in found else []
    return sorted(found - set(last)) + last


def _cells(values: Mapping[str, float], keys: list[str], digits: int = 1) -> list[str]:
    return [f"{values.get(k, float('nan')):.{digits}f}" for k in keys]


def _tables(
    results: Mapping[str, Mapping[str, float]], protocol: BenchmarkProtocol
) -> list[_Table]:
    """Models x summary metrics, the metrics over every valid target (multi-target
    splits only), one table per breakdown metric, the learned weights."""
    columns = list(protocol.summary_metrics)
    tables = [_Table("model", columns, [(m, _cells(r, columns)) for m, r in results.items()])]
    if any(MULTI_TARGET_METRICS[0] in r for r in results.values()):
        keys = list(MULTI_TARGET_METRICS)
        rows = [(m, _cells(r, keys)) for m, r in results.items()]
        tables.append(_Table("valid targets", [short_name(k) for k in keys], rows))
    breakdown = protocol.breakdown
    groups = _groups(results, breakdown) if breakdown is not None else []
    for metric in breakdown.metrics if breakdown is not None and groups else ():
        keys = [f"{g}/{metric}" for g in groups]
        rows = [(m, _cells(r, keys)) for m, r in results.items()]
        tables.append(_Table(f"{short_name(metric)} by {breakdown.by}", groups, rows))
    weights = results.get("dqe_cir", {})
    weighted = [g for g in groups if f"weights/{g}/color" in weights]
    if weighted:  # the learned attribute weights: do they follow the text?
        rows = [
            (f"{g} edits", _cells(weights, [f"weights/{g}/{a}" for a in WEIGHT_ATTRIBUTES], 2))
            for g in weighted
        ]
        tables.append(_Table("weights", list(WEIGHT_ATTRIBUTES), rows, "  (dqe_cir)"))
    return tables


def headline(summary: Mapping[str, Any], protocol: BenchmarkProtocol | None = None) -> str:
    """The evaluation summary as small text tables, as the benchmark's protocol shows it
    (default: the registered benchmark named by ``summary["dataset"]``): models x its
    summary metrics, then its per-group tables, then the learned attribute weights of
    the groups that have them."""
    protocol = protocol or summary_protocol(str(summary["dataset"]))
    results = {m: summary["models"][m] for m in HEADLINE_MODELS if m in summary["models"]}
    tables = _tables(results, protocol)
    width = max(len(label) for t in tables for label in [t.title, *(r[0] for r in t.rows)])
    width = max(width, LABEL)
    lines = [
        f"{summary['dataset']} {summary['split']}: {summary['queries']} queries, "
        f"gallery {summary['gallery']}"
    ]
    for table in tables:
        lines.append(_row(table.title, table.columns, width) + table.note)
        lines.extend(_row(label, cells, width) for label, cells in table.rows)
    return "\n".join(lines)


def mining_passes(metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """The initial mining pass and training's last refresh, each as its mining summary
    (``MiningResult.summary``), from the MLflow metrics the run's nodes returned:
    ``mining/initial.*`` one point each, ``mining/refresh.*`` one point per refresh epoch
    (epoch 0 is the initial pass again when training starts from it)."""
    passes: list[tuple[str, dict[str, float]]] = []
    initial = {
        key.removeprefix(INITIAL_MINING): float(point["value"])
        for key, point in metrics.items()
        if key.startswith(INITIAL_MINING) and isinstance(point, Mapping)
    }
    if initial:
        passes.append(("initial mining", initial))
    refreshes = {
        key.removeprefix(REFRESH_MINING): points
        for key, points in metrics.items()
        if key.startswith(REFRESH_MINING) and isinstance(points, list) and points
    }
    if refreshes:
        last = max(int(p["step"]) for points in refreshes.values() for p in points)
        latest = {
            key: float(p["value"])
            for key, points in refreshes.items()
            for p in points
            if int(p["step"]) == last
        }
        if last > 0 or not initial:
            passes.append((f"last refresh at epoch {last}", latest))
    return passes


#: The mining summary's share of drawn negatives that are valid targets of their query.
FALSE_NEGATIVE = "false_negative_rate"


def mining_lines(
    passes: list[tuple[str, dict[str, float]]],
    strategy: str,
    threshold: float = FALLBACK_WARNING_SHARE,
) -> list[str]:
    """The share of negatives that came from a fallback in each mining pass, then a
    WARNING line for each pass where more than ``threshold`` of the queries fell back."""
    passes = [(label, s) for label, s in passes if fallback_counts(s)]
    if not passes:
        return []
    shares = "; ".join(f"{label} {fallback_share(s):.1%}" for label, s in passes)
    lines = [f"negatives from a fallback ({strategy}): {shares}"]
    rates = [(label, s[FALSE_NEGATIVE]) for label, s in passes if FALSE_NEGATIVE in s]
    if rates:  # known exactly where the split lists every valid target
        shown = "; ".join(f"{label} {rate:.1%}" for label, rate in rates)
        lines.append(f"negatives that are valid targets (false negatives): {shown}")
    for label, summary in passes:
        warning = fallback_warning(summary, strategy, threshold)
        if warning is not None:
            lines.append(f"WARNING ({label}): {warning}")
    return lines


def is_server(tracking_uri: str) -> bool:
    """A tracking server (it serves the UI itself), not a local store."""
    return tracking_uri.startswith(("http://", "https://"))


def run_page_url(tracking_uri: str, host: str, port: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of a run, in its "Model training" view (MLflow 3 opens on its
    GenAI view unless the address says ``workflowType=machine_learning``).

    A tracking server (``http(s)://``) serves the UI itself; a local store (sqlite, files)
    is served by ``kedro mlflow ui`` on the ``ui`` host and port of ``mlflow.yml``.
    """
    base = tracking_uri.rstrip("/") if is_server(tracking_uri) else f"http://{host}:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


@dataclass(frozen=True)
class TrackedRun:
    """The MLflow run a summary names."""

    run_id: str
    experiment_id: str
    tracking_uri: str


def run_summary(
    table: str, run: TrackedRun | None, ui: tuple[str, str], paths: Mapping[str, str]
) -> str:
    """The whole summary: the headline table, the MLflow run and its page (``ui`` is the
    host and port ``kedro mlflow ui`` serves a local store on), then ``name: path`` lines."""
    lines = [table]
    if run is not None:
        lines.append(f"MLflow run {run.run_id} ({run.tracking_uri})")
        page = run_page_url(run.tracking_uri, *ui, run.experiment_id, run.run_id)
        start = "" if is_server(run.tracking_uri) else "`kedro mlflow ui`, then "
        lines.append(f"MLflow run page: {start}{page}")
    lines.extend(f"{name}: {where}" for name, where in paths.items())
    return "\n".join(lines)


class SummaryHooks:
    """Build the run's summary while kedro-mlflow's run is still open.

    Two steps, so that the summary is the last thing the run prints: it is built first
    among the ``after_pipeline_run`` hooks (the table becomes the run's description and
    the run id can be named), and printed last, after kedro-mlflow has logged and
    registered the model and closed the run (:class:`SummaryPrintHooks`, registered after
    this one in ``settings.py``).
    """

    def __init__(self) -> None:
        self.pending: str | None = None
        self.ui = ("127.0.0.1", "5000")
        self.mining: dict[str, Any] = {}  # the run's mining metrics (mining_passes)
        self.strategy = DEFAULT_STRATEGY

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        ui = mlflow_settings(context).get("ui") or {}
        self.ui = (str(ui.get("host", self.ui[0])), str(ui.get("port", self.ui[1])))

    @hook_impl
    def before_pipeline_run(self) -> None:
        self.mining, self.strategy = {}, DEFAULT_STRATEGY

    @hook_impl
    def after_node_run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Keep the mining summaries among a node's MLflow metrics, and the strategy."""
        for value in outputs.values():
            if isinstance(value, Mapping):
                self.mining.update(
                    (k, v)
                    for k, v in value.items()
                    if isinstance(k, str) and k.startswith((INITIAL_MINING, REFRESH_MINING))
                )
        mining = inputs.get("params:mining")  # the typed block, or its dict
        strategy = mining.get("strategy") if isinstance(mining, Mapping) else None
        strategy = strategy or getattr(mining, "strategy", None)
        if strategy:
            self.strategy = str(strategy)

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        self.pending = None
        if SUMMARY not in pipeline.all_outputs() or launch_rank()[0] > 0:
            return
        lines = mining_lines(mining_passes(self.mining), self.strategy)
        table = "\n".join([headline(catalog.load(SUMMARY)), *lines])
        run = mlflow.active_run()
        tracked = None
        if run is not None:  # the table is also the run's description in the MLflow UI
            mlflow.set_tag("mlflow.note.content", f"```\n{table}\n```")
            tracked = TrackedRun(run.info.run_id, run.info.experiment_id, mlflow.get_tracking_uri())
        paths = {name: catalog_location(catalog, name) for name in HEADLINE_PATHS}
        self.pending = run_summary(table, tracked, self.ui, {k: v for k, v in paths.items() if v})


class SummaryPrintHooks:
    """Print the summary :class:`SummaryHooks` built, after every other hook has run."""

    def __init__(self, summary: SummaryHooks) -> None:
        self.summary = summary

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        if self.summary.pending is not None:
            logger.info("run summary\n%s", self.summary.pending)
            self.summary.pending = None
