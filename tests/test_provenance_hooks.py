"""What an MLflow run says about itself: its name (what ran, on which benchmark, what the
command line changed) and the summary it ends with."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from kedro.io import DataCatalog, MemoryDataset

from dqe_cir_pipeline.hooks.provenance import ProvenanceHooks, run_benchmark, run_name
from dqe_cir_pipeline.hooks.summary import TrackedRun, headline, run_summary


def test_run_names_say_what_ran_on_which_benchmark_and_what_changed() -> None:
    overrides = {"training": {"optim": {"lr": 0.0001}, "loop": {"seed": 1}}}
    assert run_name("train", "synthetic") == "train · synthetic"  # a default run
    assert run_name("train", "fashioniq", overrides) == "train · fashioniq · seed=1 lr=0.0001"
    assert run_name("evaluation", None, {}) == "evaluation"
    # the environment only when it is neither the default nor the benchmark's own
    assert run_name("train", "synthetic", {}, "test") == "train · synthetic · env=test"
    assert run_name("train", "cirr", {}, "cirr") == "train · cirr"
    assert run_name("train", "synthetic", {}, "local") == "train · synthetic"


def test_the_benchmark_comes_from_the_run_parameters() -> None:
    params = {"data": {"benchmark": "fashioniq"}, "training": {}}
    assert run_benchmark(DataCatalog({"parameters": MemoryDataset(params)})) == "fashioniq"
    typed = {"data": SimpleNamespace(benchmark="cirr")}  # as Kedro validated it
    assert run_benchmark(DataCatalog({"parameters": MemoryDataset(typed)})) == "cirr"
    assert run_benchmark(DataCatalog({"parameters": MemoryDataset({"x": 1})})) is None
    assert run_benchmark(DataCatalog({})) is None


def test_a_default_run_is_named_after_its_pipeline_and_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    catalog = DataCatalog({"parameters": MemoryDataset({"data": {"benchmark": "synthetic"}})})
    run_params = {"pipeline_names": ["train"], "env": None, "runtime_params": {}, "run_id": "s1"}
    monkeypatch.setattr("sys.argv", ["kedro", "run", "--pipelines", "train"])
    try:
        with mlflow.start_run() as run:
            mlflow.set_tag("run_id", "s1")  # as kedro-mlflow tags it
            ProvenanceHooks().before_pipeline_run(run_params, catalog)
        tags = mlflow.get_run(run.info.run_id).data.tags
    finally:
        mlflow.set_tracking_uri(previous)
    assert tags["mlflow.runName"] == "train · synthetic"
    assert tags["kedro_command"] == "kedro run --pipelines train"
    assert tags["kedro_session_id"] == "s1" and "run_id" not in tags


def test_the_summary_is_a_pure_function_of_the_results() -> None:
    summary = {
        "dataset": "synthetic",
        "split": "test",
        "queries": 4,
        "gallery": 9,
        "models": {
            "dqe_cir": {"recall@10": 50.0, "avg": 40.0, "color/recall@10": 60.0},
            "zero_shot": {"recall@10": 20.0, "avg": 10.0, "color/recall@10": 25.0},
        },
    }
    table = headline(summary)
    assert table.splitlines()[0] == "synthetic test: 4 queries, gallery 9"
    assert "R@10 by edit" in table and "weights" not in table
    local = run_summary(table, TrackedRun("r1", "7", "sqlite:///x.db"), ("h", "1"), {"a": "/p"})
    assert "MLflow run page: `kedro mlflow ui`, then http://h:1/#/experiments/7/runs/r1" in local
    assert local.splitlines()[-1] == "a: /p"
    served = run_summary(table, TrackedRun("r1", "7", "http://srv:5000/"), ("h", "1"), {})
    assert "MLflow run page: http://srv:5000/#/experiments/7/runs/r1?" in served
    assert run_summary(table, None, ("h", "1"), {}) == table
