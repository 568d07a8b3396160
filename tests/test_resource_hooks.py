"""Per-node time and memory: logged to the active MLflow run, saves counted separately."""

from __future__ import annotations

import time
from pathlib import Path

import mlflow
import pytest
from kedro.pipeline import node

from dqe_cir_pipeline.hooks.resources import ResourceHooks


def test_node_time_save_time_and_memory_reach_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    n = node(lambda x: x, "a", "b", name="slow_node")
    hooks = ResourceHooks()
    monkeypatch.setattr(ResourceHooks, "MIN_SAVE_SECONDS", 0.05)
    with mlflow.start_run() as run:
        hooks.before_node_run(n)
        time.sleep(0.1)
        hooks.after_node_run(n)
        hooks.before_dataset_saved("b", n)
        time.sleep(0.12)  # a lazy dataset computing while it is saved
        hooks.after_dataset_saved("b", n)
        hooks.before_dataset_saved("c", n)  # a quick save adds time but logs nothing new
        hooks.after_dataset_saved("c", n)
    metrics = mlflow.get_run(run.info.run_id).data.metrics
    mlflow.set_tracking_uri(previous)
    assert 0.1 <= metrics["resources/slow_node.seconds"] < 5
    assert 0.12 <= metrics["resources/slow_node.save_seconds"] < 5
    assert metrics["resources/slow_node.peak_rss_gib"] > 0.05
    assert "resources/slow_node.peak_gpu_gib" not in metrics  # CUDA never started here


def test_without_a_run_the_hook_only_logs(caplog: pytest.LogCaptureFixture) -> None:
    n = node(lambda x: x, "a", "b", name="plain")
    hooks = ResourceHooks()
    with caplog.at_level("INFO", logger="dqe_cir_pipeline.hooks.resources"):
        hooks.before_node_run(n)
        hooks.after_node_run(n)
    assert mlflow.active_run() is None
    assert any("node plain:" in r.getMessage() for r in caplog.records)
