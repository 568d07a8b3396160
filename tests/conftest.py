"""Suite-wide settings: offline hub, deterministic threads, the gpu marker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


ROOT = Path(__file__).resolve().parents[1]


def kedro(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the project's ``kedro`` CLI in the repository with ``env``; fail with its log.

    stderr is merged into stdout, in the order a terminal shows them (``proc.stderr`` is
    left empty), so tests can check what comes last.
    """
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    proc.stderr = ""
    if proc.returncode != 0:
        raise AssertionError(f"kedro {' '.join(args)} failed:\n{proc.stdout[-8000:]}")
    return proc


@pytest.fixture(scope="session")
def kedro_test_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One ``kedro run --env test --pipeline=train`` into a temporary data root and
    MLflow store, shared by the end-to-end, notebook and report tests."""
    tmp = tmp_path_factory.mktemp("kedro_run")
    env = {
        **os.environ,
        "DQE_DATA_ROOT": str(tmp / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "DQE_MLFLOW_ARTIFACTS": (tmp / "artifacts").as_uri(),
        "HF_HUB_OFFLINE": "1",
        # the test run is short: sample MLflow's system metrics every 2 s, not every 10
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "2",
    }
    proc = kedro(["run", "--env", "test", "--pipelines", "train"], env)
    return {
        "tmp": tmp,
        "env": env,
        "data": tmp / "data" / "synthetic",
        "log": proc.stdout + proc.stderr,
    }
