"""A benchmark added the documented way runs through the real pipelines.

The toy benchmark is one module (``tests/fixtures/toy_benchmark.py``) registered through
the ``dqe_cir_pipeline.benchmarks`` entry-point group, as an installed package adds one
(here a ``.dist-info`` folder on ``PYTHONPATH``), plus one configuration environment
(``tests/fixtures/conf_toy``, beside ``conf/base`` in a copy of the configuration).
Nothing of the project changes. ``kedro run`` ingests, extracts, mines, trains one epoch
and evaluates it; its own protocol (no subset recall, ``avg`` = mean of R@1 and R@5)
is the one the evaluation applies.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, kedro

pytestmark = pytest.mark.slow

FIXTURES = ROOT / "tests" / "fixtures"
STAGES = "data_ingestion,embedding_extraction,negative_mining,training,evaluation"


def _install_entry_point(site: Path) -> None:
    """What ``pip install`` of a package declaring the entry point would leave behind."""
    dist = site / "toy_benchmark-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-benchmark\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[dqe_cir_pipeline.benchmarks]\ntoy = toy_benchmark:BENCHMARK\n"
    )


def test_toy_benchmark_is_ingested_trained_and_evaluated(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_entry_point(site)
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf" / "base", conf / "base")
    shutil.copytree(FIXTURES / "conf_toy", conf / "toy")
    path = [str(site), str(FIXTURES), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "DQE_DATA_ROOT": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "DQE_MLFLOW_ARTIFACTS": (tmp_path / "artifacts").as_uri(),
        "HF_HUB_OFFLINE": "1",
    }
    kedro(["run", "--conf-source", str(conf), "--env", "toy", "--pipelines", STAGES], env)

    data = tmp_path / "data" / "toy"
    report = json.loads((data / "08_reporting" / "ingestion_report.json").read_text())
    assert report["verdict"] == "passed" and report["dataset"] == ["toy"]
    triplets = pd.read_parquet(data / "02_intermediate" / "triplets.parquet")
    assert set(triplets["dataset"]) == {"toy"}
    assert set(triplets["split"]) == {"train", "val", "test"}
    summary = json.loads((data / "08_reporting" / "evaluation.json").read_text())
    assert summary["dataset"] == "toy" and summary["split"] == "test"
    assert set(summary["models"]) == {"dqe_cir", "zero_shot", "untrained", "text_blind"}
    for metrics in summary["models"].values():
        assert not any(k.startswith("recall_subset") for k in metrics)
        assert metrics["avg"] == pytest.approx((metrics["recall@1"] + metrics["recall@5"]) / 2)
