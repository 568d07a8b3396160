"""``torchrun -m kedro run --pipeline training``: DDP over two gloo ranks, one writer.

Rank 0 is the run: one MLflow run, datasets written once. Rank 1 trains its slice of
every batch and keeps its outputs in memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.pipeline import Pipeline, node
from kedro_datasets.pandas import ParquetDataset

from dqe_cir_pipeline.hooks.distributed import DistributedHooks, RankLocalDataset
from tests.conftest import ROOT


def _runs(env: dict[str, str]) -> pd.DataFrame:
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    return mlflow.search_runs(experiment_names=["dqe_cir_test"], order_by=["start_time ASC"])


@pytest.mark.slow
def test_torchrun_kedro_training_writes_once_from_rank_zero(
    kedro_test_run: dict[str, Any], tmp_path: Path
) -> None:
    env = {**kedro_test_run["env"], "OMP_NUM_THREADS": "1"}
    data = kedro_test_run["data"]
    history_path = data / "07_model_output/training_history.parquet"
    before_mtime = history_path.stat().st_mtime_ns
    before = _runs(env)
    run_dir = tmp_path / "ddp_run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "kedro",
            "run",
            "--env",
            "test",
            "--pipelines",
            "training",
            "--params",
            f"training.loop.run_dir={run_dir}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert (
        "rank 0/2 joined the gloo process group" in log
        and "rank 1/2 joined the gloo process group" in log
    )
    assert "rank 1/2: datasets are read-only here" in log

    after = _runs(env)
    new = after[~after.run_id.isin(before.run_id)]
    assert len(new) == 1, new[["run_id", "tags.kedro_pipeline"]]  # rank 1 opened no run
    run = mlflow.get_run(new.run_id.iloc[0])
    assert run.data.tags["kedro_pipeline"] == "training"
    steps = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in steps] == [0, 1]  # each epoch logged once, not once per rank

    assert history_path.stat().st_mtime_ns > before_mtime
    history = pd.read_parquet(history_path)
    assert len(history) == 2 and history["train/loss"].notna().all()
    (keyed,) = run_dir.iterdir()  # one folder per (data, backbone, settings)
    assert keyed.name.startswith("run-")
    assert sorted(p.name for p in keyed.iterdir()) == ["best.pt", "last.pt"]


def test_rank_one_reads_datasets_but_never_writes_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "table.parquet"
    ParquetDataset(filepath=str(path)).save(pd.DataFrame({"a": [1, 2]}))
    stamp = path.stat().st_mtime_ns
    catalog = DataCatalog(
        datasets={
            "table": ParquetDataset(filepath=str(path)),
            "other": ParquetDataset(filepath=str(tmp_path / "other.parquet")),
        }
    )
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    DistributedHooks().after_catalog_created(catalog)
    assert isinstance(catalog.get("table"), RankLocalDataset)
    assert catalog.load("table")["a"].tolist() == [1, 2]  # read from disk
    catalog.save("table", pd.DataFrame({"a": [9]}))
    catalog.save("other", pd.DataFrame({"b": [3]}))
    assert catalog.load("table")["a"].tolist() == [9]  # this rank's own output, from memory
    assert path.stat().st_mtime_ns == stamp and not (tmp_path / "other.parquet").exists()


def test_rank_zero_keeps_the_configured_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = DataCatalog(datasets={"t": ParquetDataset(filepath=str(tmp_path / "t.parquet"))})
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    DistributedHooks().after_catalog_created(catalog)
    assert isinstance(catalog.get("t"), ParquetDataset)


def test_torchrun_refuses_pipelines_that_write_shared_caches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dqe_cir_pipeline.pipeline_registry import register_pipelines

    monkeypatch.setenv("WORLD_SIZE", "2")
    pipelines = register_pipelines()
    DistributedHooks().before_pipeline_run(pipelines["training"] + pipelines["evaluation"])
    with pytest.raises(RuntimeError, match="extract_vit_features|only the training and evaluation"):
        DistributedHooks().before_pipeline_run(pipelines["train"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    DistributedHooks().before_pipeline_run(pipelines["train"])  # a plain run: anything goes
    DistributedHooks().before_pipeline_run(Pipeline([node(lambda: 1, None, "x", name="n")]))


def test_settings_drop_kedro_mlflow_hooks_on_other_ranks() -> None:
    code = "import dqe_cir_pipeline.settings as s; print(s.DISABLE_HOOKS_FOR_PLUGINS)"
    out = {}
    for rank in ("0", "1"):
        env = {**os.environ, "RANK": rank, "WORLD_SIZE": "2"}
        out[rank] = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
    assert out["0"] == "()" and "kedro_mlflow" in out["1"]
