"""``dqe-cir-pipeline``: ``--help`` lists the commands; ``run`` is Kedro's run command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    for name in ("run", "search", "serve", "convert-lavis"):
        assert sum(line.startswith(f"  {name} ") for line in lines) == 1, name
    assert set(COMMANDS) == {"run", "search", "serve", "convert-lavis"}
    assert "--from-nodes" not in proc.stdout  # Kedro's run options: `run --help`
    assert "kedro.framework" not in proc.stdout + proc.stderr  # no start-up log either


def test_run_help_is_kedros_run_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["run", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "Usage: dqe-cir-pipeline run [OPTIONS]" in out
    assert "--pipelines" in out and "--conf-source" in out and "--params" in out


def test_convert_lavis_is_the_converter_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["convert-lavis", "--help"])
    assert done.value.code == 0
    assert "--arch {pretrain,pretrain_vitL}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:  # the converter's own errors and exit status
        main(
            [
                "convert-lavis",
                "--arch",
                "pretrain_vitL",
                "--qformer",
                str(tmp_path / "q.pth"),
                "--vision",
                str(tmp_path / "v.pth"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert done.value.code == 2
    assert "--tokenizer" in capsys.readouterr().err
