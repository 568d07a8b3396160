"""What an MLflow run records about itself, so a reader of the UI can trust a number.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs the parameter dicts and
the ``Mlflow*Dataset`` outputs. :class:`ProvenanceHooks` adds the rest: the typed
parameter blocks one leaf per param, a run name saying what ran on which benchmark,
the git commit, the data fingerprint and the benchmark as dataset input, and for a run
evaluating a checkpoint trained elsewhere, the link to that training run.
:class:`IngestionArtifactHooks` keeps ingestion's quarantine table and report.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from kedro.framework.hooks import hook_impl
from kedro.io import DataCatalog
from mlflow.data.dataset_source_registry import get_registered_sources
from mlflow.data.meta_dataset import MetaDataset

from dqe_cir_pipeline.data_sources.registry import benchmark_names
from dqe_cir_pipeline.hooks.project import catalog_location, project_root
from dqe_cir_pipeline.launch import launch_rank

if TYPE_CHECKING:  # importing it sets up Kedro's logging; hooks only receive one
    from kedro.framework.context import KedroContext

logger = logging.getLogger(__name__)

#: Node outputs whose ``fingerprint`` entry becomes the ``dataset_fingerprint`` tag.
FINGERPRINT_OUTPUT = "ingestion_report"
#: The trained checkpoint: its dict records the MLflow run that trained it, and a run
#: that evaluates it is linked back to that run.
CHECKPOINT = "model_checkpoint"
#: The extraction stage's description of the backbone; its architecture becomes params.
BACKBONE_INFO = "backbone_info"
#: ``backbone_info`` entries logged as ``backbone.<entry>`` params (the typed ``backbone``
#: block only names a folder; these say what the folder holds: a LAVIS conversion's arch
#: and the ViT depth it was converted at).
BACKBONE_FIELDS = ("arch", "vision_tower", "vision_depth")
#: Separates the parts of a run name.
NAME_SEPARATOR = " · "
#: Environments a run name does not mention (Kedro's default run environment).
PLAIN_ENVS = ("local", "base")


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


def run_name(
    pipelines: str,
    benchmark: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: str | None = None,
) -> str:
    """``train · synthetic``, ``train · fashioniq · lr=0.0001 seed=1``: what ran, on which
    benchmark, in which environment when it is not the default one (nor the benchmark's
    own), and what ``--params`` changed (the last part of each key)."""
    parts = [pipelines]
    if benchmark:
        parts.append(benchmark)
    if env and env not in PLAIN_ENVS and env != benchmark:
        parts.append(f"env={env}")
    changed = flat_params("", dict(overrides or {}))
    if changed:
        parts.append(
            " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in sorted(changed.items()))
        )
    return NAME_SEPARATOR.join(parts)


def pipeline_label(run_params: Mapping[str, Any]) -> str:
    """The pipelines a run was asked for, comma-separated (``__default__`` when none)."""
    names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
    return ",".join(names)


def run_benchmark(catalog: DataCatalog) -> str | None:
    """The benchmark a run reads (``data.benchmark``), if its parameters name one."""
    if "parameters" not in catalog:
        return None
    data = (catalog.get("parameters").load() or {}).get("data")  # quietly: no log line
    # a dict, or the typed block Kedro validated it into
    benchmark = (
        data.get("benchmark") if isinstance(data, dict) else getattr(data, "benchmark", None)
    )
    return str(benchmark) if benchmark else None


def readable_kedro_tags(run_params: Mapping[str, Any], argv: list[str]) -> dict[str, str]:
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
    inactive = tuple(f"data.{b}." for b in benchmark_names() if b != active)
    return {k: v for k, v in params.items() if not k.startswith(inactive)}


def log_dataset_input(report: dict[str, Any], data_cfg: Any) -> None:
    """The ingested benchmark as the run's MLflow dataset input: name, digest (the data
    fingerprint) and source (its annotation folder), shown in the run's Datasets panel."""
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


def backbone_params(info: Mapping[str, Any]) -> dict[str, str]:
    """``backbone.arch``, ``backbone.vision_tower``, ``backbone.vision_depth`` of a
    ``backbone_info`` dict (those it has)."""
    return {f"backbone.{key}": str(info[key]) for key in BACKBONE_FIELDS if key in info}


def link_training_run(checkpoint: dict[str, Any]) -> None:
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


class ProvenanceHooks:
    """Tag the active MLflow run with its name, the git commit and the data fingerprint,
    and log the typed parameter blocks one leaf per MLflow param (``training.optim.lr``).

    kedro-mlflow flattens parameter *dicts*; the blocks Kedro validated into dataclasses
    reach it as objects, which it would log as a single string.
    """

    def __init__(self) -> None:
        self._context: KedroContext | None = None
        self._backbone_logged: tuple[str, dict[str, str]] | None = None  # (run id, params)

    @hook_impl
    def after_context_created(self, context: KedroContext) -> None:
        self._context = context

    def _log_backbone(self, info: Any) -> None:
        """The backbone's architecture as params, once per run (the extraction stage
        outputs ``backbone_info``; a run reusing it reads it as an input)."""
        run = mlflow.active_run()
        params = backbone_params(info) if isinstance(info, Mapping) else {}
        if run is None or not params or self._backbone_logged == (run.info.run_id, params):
            return
        try:
            mlflow.log_params(params)
        except Exception as err:  # noqa: BLE001 - provenance must never fail a run
            logger.warning("could not log the backbone's architecture to MLflow: %s", err)
        self._backbone_logged = (run.info.run_id, params)

    @hook_impl
    def before_node_run(self, inputs: dict[str, Any]) -> None:
        self._log_backbone(inputs.get(BACKBONE_INFO))
        typed = {
            name.removeprefix("params:"): value
            for name, value in inputs.items()
            if name.startswith("params:") and dataclasses.is_dataclass(value)
        }
        if not typed or mlflow.active_run() is None:
            return
        params: dict[str, Any] = {}
        for name, value in typed.items():
            params.update(flat_params(name, value))
        mlflow.log_params(active_benchmark_params(params))
        checkpoint = inputs.get(CHECKPOINT)
        if isinstance(checkpoint, dict):
            link_training_run(checkpoint)

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], catalog: DataCatalog) -> None:
        run = mlflow.active_run()
        if run is None:
            return
        pipelines = pipeline_label(run_params)
        env = run_params.get("env")
        overrides = run_params.get("runtime_params") or {}
        mlflow.set_tags(
            {
                "git_commit": git_commit(project_root(self._context)),
                "kedro_env": str(env or "local"),
                "kedro_pipeline": pipelines,
                "mlflow.runName": run_name(pipelines, run_benchmark(catalog), overrides, env),
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
        run = mlflow.active_run()
        if run is not None:
            data.setdefault("provenance", {})["mlflow_run_id"] = run.info.run_id

    @hook_impl
    def after_node_run(self, outputs: dict[str, Any], inputs: dict[str, Any]) -> None:
        self._log_backbone(outputs.get(BACKBONE_INFO))
        report = outputs.get(FINGERPRINT_OUTPUT)
        if not isinstance(report, dict) or "fingerprint" not in report:
            return
        if mlflow.active_run() is None:
            return
        mlflow.set_tag("dataset_fingerprint", str(report["fingerprint"]))
        log_dataset_input(report, inputs.get("params:data"))


class IngestionArtifactHooks:
    """The quarantine table and the ingestion report as MLflow artifacts (``ingestion/``).

    Logged as soon as each is saved, so a run whose validation fails still has both:
    ``validate_ingestion`` writes the report (verdict, problems, counts) and its metrics
    before ``publish_tables`` fails the run.
    """

    ARTIFACTS = ("quarantine", "ingestion_report")

    def __init__(self) -> None:
        self._catalog: DataCatalog | None = None

    @hook_impl
    def after_catalog_created(self, catalog: DataCatalog) -> None:
        self._catalog = catalog

    @hook_impl
    def after_dataset_saved(self, dataset_name: str) -> None:
        if dataset_name not in self.ARTIFACTS or self._catalog is None or launch_rank()[0] > 0:
            return
        where = catalog_location(self._catalog, dataset_name)
        if mlflow.active_run() is None or not where or not Path(where).is_file():
            return
        mlflow.log_artifact(where, artifact_path="ingestion")
