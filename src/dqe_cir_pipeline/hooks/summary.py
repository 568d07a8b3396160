"""The headline a run that evaluated ends with: trained vs zero-shot vs untrained vs
text-blind, R@10 per edit type, the learned weights, the MLflow run and the output paths.

The text is built by pure functions (:func:`headline`, :func:`run_summary`); the hooks
only gather what they need from the catalog and MLflow, and print it last.
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

from dqe_cir_pipeline.hooks.project import catalog_location, mlflow_settings
from dqe_cir_pipeline.launch import launch_rank

if TYPE_CHECKING:  # importing it sets up Kedro's logging; hooks only receive one
    from kedro.framework.context import KedroContext

logger = logging.getLogger(__name__)

#: Rows and columns of the end-of-run headline (metrics the evaluation writes).
HEADLINE_MODELS = ("dqe_cir", "zero_shot", "untrained", "text_blind")
HEADLINE_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "avg")
#: Catalog entries whose location the headline names, when the run produced them.
HEADLINE_PATHS = ("model_checkpoint", "evaluation_summary", "query_rankings", "training_history")
#: The evaluation's summary (a catalog entry): a run that writes it gets a headline.
SUMMARY = "evaluation_summary"
#: The learned attribute weights shown per edit type.
WEIGHT_ATTRIBUTES = ("base", "color", "shape")
#: Width of a table cell.
CELL = 17


def _row(label: str, cells: list[str]) -> str:
    return f"{label:<12}" + "".join(f"{c:>{CELL}}" for c in cells)


def headline(summary: Mapping[str, Any]) -> str:
    """The evaluation summary as a small text table: models x main metrics, then R@10 per
    edit type when the benchmark has them, then the learned attribute weights."""
    results = summary["models"]
    models = [m for m in HEADLINE_MODELS if m in results]
    rows = [
        f"{summary['dataset']} {summary['split']}: {summary['queries']} queries, "
        f"gallery {summary['gallery']}",
        _row("model", list(HEADLINE_METRICS)),
    ]
    for name in models:
        rows.append(
            _row(name, [f"{results[name].get(m, float('nan')):.1f}" for m in HEADLINE_METRICS])
        )
    edit_types = sorted({k.split("/")[0] for k in results[models[0]] if k.endswith("/recall@10")})
    if edit_types:
        rows.append(_row("R@10 by edit", edit_types))
        for name in models:
            cells = [f"{results[name].get(f'{e}/recall@10', float('nan')):.1f}" for e in edit_types]
            rows.append(_row(name, cells))
    weights = results.get("dqe_cir", {})
    weight_rows = [e for e in edit_types if f"weights/{e}/color" in weights]
    if weight_rows:  # the learned attribute weights: do they follow the text?
        rows.append(_row("weights", list(WEIGHT_ATTRIBUTES)) + "  (dqe_cir)")
        for e in weight_rows:
            cells = [f"{weights[f'weights/{e}/{a}']:.2f}" for a in WEIGHT_ATTRIBUTES]
            rows.append(_row(f"{e} edits", cells))
    return "\n".join(rows)


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

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        ui = mlflow_settings(context).get("ui") or {}
        self.ui = (str(ui.get("host", self.ui[0])), str(ui.get("port", self.ui[1])))

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self, pipeline: Pipeline, catalog: DataCatalog) -> None:
        self.pending = None
        if SUMMARY not in pipeline.all_outputs() or launch_rank()[0] > 0:
            return
        table = headline(catalog.load(SUMMARY))
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
