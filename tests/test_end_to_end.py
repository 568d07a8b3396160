"""The whole job through the real Kedro CLI, catalog, kedro-mlflow and sqlite store."""

from __future__ import annotations

import json
from typing import Any

import mlflow
import pandas as pd
import pytest
import torch

from tests.conftest import kedro

pytestmark = pytest.mark.slow


def _runs(run: dict[str, Any]) -> pd.DataFrame:
    mlflow.set_tracking_uri(run["env"]["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["dqe_cir_test"], order_by=["start_time ASC"])


def test_train_pipeline_writes_every_artifact(kedro_test_run: dict[str, Any]) -> None:
    data = kedro_test_run["data"]
    for rel in (
        "02_intermediate/images.parquet",
        "02_intermediate/triplets.parquet",
        "02_intermediate/quarantine.parquet",
        "05_model_input/initial_negatives.parquet",
        "06_models/best_checkpoint.pt",
        "07_model_output/training_history.parquet",
        "08_reporting/evaluation.json",
        "08_reporting/recall_curves.png",
        "08_reporting/qualitative_failures.png",
        "08_reporting/delta_distribution.png",
    ):
        assert (data / rel).exists(), rel
    ckpt = torch.load(data / "06_models/best_checkpoint.pt", weights_only=True)
    assert ckpt["backbone"]["name"].endswith("models/tiny-blip2-synthetic")  # the shipped one
    summary = json.loads((data / "08_reporting/evaluation.json").read_text())
    assert set(summary["models"]) == {"dqe_cir", "zero_shot", "untrained", "text_blind"}
    # selected on val (the checkpoint's metrics), reported on the held-out test split
    assert summary["split"] == "test" and summary["queries"] > 0
    assert "reported split test" in kedro_test_run["log"]


def test_mlflow_run_has_params_metrics_tags_and_artifacts(kedro_test_run: dict[str, Any]) -> None:
    runs = _runs(kedro_test_run)
    assert len(runs) >= 1
    run = mlflow.get_run(runs.run_id.iloc[0])
    assert run.data.params["training.loop.epochs"] == "2"  # the test env, flattened
    assert run.data.tags["dataset_fingerprint"]
    inputs = run.inputs.dataset_inputs  # the Datasets panel: name, digest, source
    assert [d.dataset.name for d in inputs] == ["synthetic"]
    assert run.data.tags["dataset_fingerprint"].startswith(inputs[0].dataset.digest)
    assert not any(k.startswith(("data.cirr.", "data.fashioniq.")) for k in run.data.params)
    assert run.data.tags["git_commit"]
    # what ran, on which benchmark, in which environment; no command-line overrides
    assert run.data.tags["mlflow.runName"] == "train · synthetic · env=test"
    # kedro-mlflow's unreadable tags replaced: a class name, the session id by its name,
    # the command as typed
    assert run.data.tags["runner"] == "SequentialRunner"
    assert "run_id" not in run.data.tags and run.data.tags["kedro_session_id"]
    assert run.data.tags["kedro_command"] == "kedro run --env test --pipelines train"
    assert "dqe_cir" in run.data.tags["mlflow.note.content"]  # the headline as description
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    metrics = run.data.metrics
    for key in (
        "ingestion/images",
        "train/loss",
        "val/avg",
        "eval/dqe_cir.avg",
        "eval/text_blind.recall_at_10",
        "mining/initial.seconds",
        "avg",  # the headline, also ungrouped (short names for the runs table)
        "recall_at_10",
    ):
        assert key in metrics, key
    assert metrics["avg"] == metrics["eval/dqe_cir.avg"]
    ungrouped = {k for k in metrics if "/" not in k}
    assert ungrouped == {"avg", *(f"recall_at_{k}" for k in (1, 5, 10, 50))} | {
        f"recall_subset_at_{k}" for k in (1, 2, 3)
    }, ungrouped
    # grouped by stage, no doubled prefixes (kedro-mlflow's dataset-name prefix is off)
    assert not [k for k in metrics if "_metrics." in k or k.startswith("mining/mining")]
    groups = {k.split("/")[0] for k in metrics if "/" in k}
    assert {"eval", "train", "val", "mining", "ingestion", "resources"} <= groups
    # MLflow's system metrics (psutil): the run's CPU and memory over time
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics
    history = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]
    artifacts = {
        a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "plots")
    }
    assert "plots/recall_curves.png" in artifacts
    ckpts = {
        a.path
        for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "checkpoints")
    }
    assert "checkpoints/best_checkpoint.pt" in ckpts


def test_rerun_reuses_features_and_evaluation_runs_alone(kedro_test_run: dict[str, Any]) -> None:
    env = kedro_test_run["env"]
    kedro(["run", "--env", "test", "--pipelines", "embedding_extraction"], env)
    report = json.loads(
        (kedro_test_run["data"] / "08_reporting/extraction_report.json").read_text()
    )
    assert (
        report["last_save"]["computed"] == 0 and report["last_save"]["reused"] == report["images"]
    )
    kedro(["run", "--env", "test", "--pipelines", "evaluation"], env)
    evaluated = mlflow.get_run(_runs(kedro_test_run).run_id.iloc[-1])
    # the evaluation-only run names the run that trained its checkpoint (another test may
    # have retrained it since the session's run), with that run's params
    trained = mlflow.get_run(evaluated.data.tags["training_run_id"])
    assert trained.info.run_id != evaluated.info.run_id
    assert "train/loss" in trained.data.metrics
    assert (
        evaluated.data.params["training.loop.epochs"] == trained.data.params["training.loop.epochs"]
    )
    assert evaluated.data.tags["checkpoint_data_fingerprint"]
    kedro(["run", "--env", "test", "--pipelines", "zero_shot"], env)
    zero = json.loads((kedro_test_run["data"] / "08_reporting/zero_shot.json").read_text())
    assert "zero_shot" in zero["models"] and "dqe_cir" not in zero["models"]
    assert len(_runs(kedro_test_run)) >= 4  # one MLflow run per kedro run


def test_the_run_ends_with_its_headline(kedro_test_run: dict[str, Any]) -> None:
    log = kedro_test_run["log"]
    # start-up noise that is not the user's business is silenced (settings.py)
    assert "Replacing dataset" not in log and "register_new_resolver" not in log
    for noise in ("Add type hints to the `predict`", "`python_model`", "Downloading artifacts"):
        assert noise not in log, noise
    assert "Warning" not in log and " WARNING " not in log, [
        line for line in log.splitlines() if "Warning" in line or " WARNING " in line
    ]
    tail = log[log.index("run summary") :]
    assert "synthetic test:" in tail
    for row in ("dqe_cir", "zero_shot", "untrained", "text_blind", "R@10 by edit", "weights"):
        assert row in tail, row
    weights = tail[tail.index("weights") :].splitlines()
    colour = next(line for line in weights if line.startswith("color edits")).split()[2:]
    assert len(colour) == 3 and abs(sum(map(float, colour)) - 1.0) < 0.02  # base+color+shape
    assert "MLflow run " in tail and "model_checkpoint: " in tail
    run_id = _runs(kedro_test_run).run_id.iloc[0]
    assert f"/runs/{run_id}?workflowType=machine_learning" in tail  # the training view
    # ... and it is the end of the run's output: after it, only its own paths
    last = [line for line in tail.splitlines() if line.strip()][-4:]
    assert all(": /" in line for line in last), last
    assert "Successfully registered model" not in tail  # kedro-mlflow's lines come before


def test_a_stage_before_its_inputs_exist_says_what_to_run_first(
    tmp_path: Any, kedro_test_run: dict[str, Any]
) -> None:
    env = {
        **kedro_test_run["env"],
        "DQE_DATA_ROOT": str(tmp_path / "fresh"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }
    with pytest.raises(AssertionError) as failed:
        kedro(["run", "--env", "test", "--pipelines", "evaluation"], env)
    log = str(failed.value)
    assert "inputs do not exist yet" in log
    assert "model_checkpoint (" in log and "written by the `training` pipeline" in log
    assert "kedro run --pipelines=train` first" in log
    assert not (tmp_path / "fresh" / "synthetic" / "08_reporting").exists()  # nothing ran
