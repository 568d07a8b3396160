"""``dqe-cir-pipeline``: ``--help`` lists the commands; ``run`` is Kedro's run command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dqe_cir_pipeline.__main__ import COMMANDS, main
from tests.conftest import ROOT


def test_help_lists_every_command_with_one_line_each() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dqe_cir_pipeline", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    lines = proc.stdout.splitlines()
    for name in ("run", "search", "serve"):
        assert sum(line.startswith(f"  {name} ") for line in lines) == 1, name
    assert set(COMMANDS) == {"run", "search", "serve"}
    assert "--from-nodes" not in proc.stdout  # Kedro's run options: `run --help`
    assert "kedro.framework" not in proc.stdout + proc.stderr  # no start-up log either


def test_run_help_is_kedros_run_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "Usage: dqe-cir-pipeline run [OPTIONS]" in out
    assert "--pipelines" in out and "--conf-source" in out and "--params" in out
