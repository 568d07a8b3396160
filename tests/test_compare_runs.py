"""``benchmarks/compare_runs.py`` on a temporary sqlite store filled with fake runs."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

mlflow = pytest.importorskip("mlflow")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"
PREFIX = "eval/"
GROUP_BY = "training.loss.objective,training.loss.use_margins"


@pytest.fixture(scope="module")
def compare_runs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_runs"] = module
    spec.loader.exec_module(module)
    return module


def _log_run(
    client: mlflow.MlflowClient,
    exp_id: str,
    params: dict[str, str],
    metrics: dict[str, float],
    status: str = "FINISHED",
) -> str:
    run = client.create_run(exp_id, start_time=int(time.time() * 1000))
    for k, v in params.items():
        client.log_param(run.info.run_id, k, v)
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v, step=0)
    client.set_terminated(run.info.run_id, status=status)
    time.sleep(0.002)  # distinct start times, so "latest" is well defined
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Fake runs: 3 seeds of DQE-CIR, 2 of the contrastive baseline, plus noise.

    Module-scoped: creating an sqlite store runs MLflow's schema migrations (seconds).
    """
    tmp_path = tmp_path_factory.mktemp("mlflow_store")
    uri = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("DQE_DATA_ROOT", str(tmp_path / "data"))
        mp.setenv("DQE_MLFLOW_ARTIFACTS", (tmp_path / "art").as_uri())
        _fill(uri, tmp_path)
        yield uri


def _fill(uri: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(
        "dqe_cir_synthetic", artifact_location=(tmp_path / "art").as_uri()
    )

    def metrics(r10: float, r50: float) -> dict[str, float]:
        return {
            f"{PREFIX}dqe_cir.recall_at_10": r10,
            f"{PREFIX}dqe_cir.recall_at_50": r50,
            f"{PREFIX}dqe_cir.color/recall_at_10": r10 - 1.0,  # a breakdown: not headline
            f"{PREFIX}zero_shot.recall_at_10": 10.0,
            "train/loss": 0.5,  # outside the prefix
        }

    dqe = {"training.loss.objective": "pairwise_kl", "training.loss.use_margins": "True"}
    con = {"training.loss.objective": "contrastive", "training.loss.use_margins": "False"}
    # this first seed-0 run is superseded by the re-run below (only the latest counts)
    _log_run(client, exp, {**dqe, "training.loop.seed": "0"}, metrics(0.0, 0.0))
    _log_run(client, exp, {**dqe, "training.loop.seed": "0"}, metrics(50.0, 70.0))
    _log_run(client, exp, {**dqe, "training.loop.seed": "1"}, metrics(52.0, 74.0))
    _log_run(client, exp, {**dqe, "training.loop.seed": "2"}, metrics(54.0, 78.0))
    _log_run(client, exp, {**con, "training.loop.seed": "0"}, metrics(40.0, 60.0))
    _log_run(client, exp, {**con, "training.loop.seed": "1"}, metrics(44.0, 66.0))
    # not counted: a failed run and a run with no evaluation metrics (data_ingestion only)
    _log_run(client, exp, {**con, "training.loop.seed": "2"}, metrics(99.0, 99.0), status="FAILED")
    _log_run(client, exp, {"training.loop.seed": "3"}, {"ingestion/images": 128.0})


def test_main_writes_mean_and_std_per_group(
    compare_runs: ModuleType, store: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rc = compare_runs.main(
        [
            "--experiment",
            "dqe_cir_synthetic",
            "--tracking-uri",
            store,
            "--group-by",
            GROUP_BY,
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv")
    assert len(table) == 2
    dqe = table[table["training.loss.objective"] == "pairwise_kl"].iloc[0]
    con = table[table["training.loss.objective"] == "contrastive"].iloc[0]

    assert dqe["n_runs"] == 3 and dqe["seeds"] == "0,1,2"
    assert dqe["dqe_cir.recall_at_10_mean"] == pytest.approx(52.0)
    assert dqe["dqe_cir.recall_at_10_std"] == pytest.approx(2.0)  # sample std of 50, 52, 54
    assert dqe["dqe_cir.recall_at_50_mean"] == pytest.approx(74.0)
    assert dqe["dqe_cir.recall_at_50_std"] == pytest.approx(4.0)
    assert con["n_runs"] == 2 and con["seeds"] == "0,1"
    assert con["dqe_cir.recall_at_10_mean"] == pytest.approx(42.0)
    assert con["dqe_cir.recall_at_10_std"] == pytest.approx(math.sqrt(8.0))
    assert con["dqe_cir.recall_at_50_mean"] == pytest.approx(63.0)

    # defaults: only the dqe_cir model and only headline metrics (no "/" breakdowns)
    metric_cols = {c for c in table.columns if c.endswith("_mean")}
    assert metric_cols == {"dqe_cir.recall_at_10_mean", "dqe_cir.recall_at_50_mean"}
    # best group first
    assert table.iloc[0]["training.loss.objective"] == "pairwise_kl"

    md = (out / "comparison.md").read_text()
    assert "| pairwise_kl | True | 3 | 0,1,2 | 52.00 ± 2.00 | 74.00 ± 4.00 |" in md
    assert "| contrastive | False | 2 | 0,1 | 42.00 ± 2.83 | 63.00 ± 4.24 |" in md
    png = (out / "comparison.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_models_and_metrics_selection(compare_runs: ModuleType, store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = compare_runs.main(
        [
            "--tracking-uri",
            store,
            "--group-by",
            GROUP_BY,
            "--out-dir",
            str(out),
            "--models",
            "all",
            "--metrics",
            "recall_at_10",
            "color/recall_at_10",
        ]
    )
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv")
    assert {c for c in table.columns if c.endswith("_mean")} == {
        "dqe_cir.recall_at_10_mean",
        "dqe_cir.color/recall_at_10_mean",
        "zero_shot.recall_at_10_mean",
    }
    dqe = table[table["training.loss.objective"] == "pairwise_kl"].iloc[0]
    assert dqe["dqe_cir.color/recall_at_10_mean"] == pytest.approx(51.0)
    assert dqe["zero_shot.recall_at_10_std"] == pytest.approx(0.0)


def test_single_run_has_no_std_and_missing_param_is_marked(
    compare_runs: ModuleType, store: str
) -> None:
    runs = compare_runs.fetch_runs(
        store,
        "dqe_cir_synthetic",
        PREFIX,
        ["training.loss.objective", "training.loop.seed", "mining.strategy"],
    )
    assert len(runs) == 7  # the failed run is left out
    assert set(runs["mining.strategy"]) == {compare_runs.UNSET}
    one = runs[runs["training.loop.seed"] == "2"]
    summary = compare_runs.summarise(
        one, ["training.loss.objective"], "training.loop.seed", ["dqe_cir.recall_at_10"]
    )
    assert summary["n_runs"].tolist() == [1]
    assert summary["dqe_cir.recall_at_10_mean"].tolist() == [54.0]
    assert math.isnan(summary["dqe_cir.recall_at_10_std"].iloc[0])
    assert "| 54.00 |" in compare_runs.to_markdown(
        summary, ["training.loss.objective"], ["dqe_cir.recall_at_10"]
    )


def test_unknown_experiment_and_no_metrics(
    compare_runs: ModuleType, store: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no experiment 'nope'"):
        compare_runs.main(
            ["--experiment", "nope", "--tracking-uri", store, "--out-dir", str(tmp_path)]
        )
    rc = compare_runs.main(
        [
            "--tracking-uri",
            store,
            "--metric-prefix",
            "no_such_prefix.",
            "--out-dir",
            str(tmp_path / "x"),
        ]
    )
    assert rc == 1
    assert not (tmp_path / "x").exists()
