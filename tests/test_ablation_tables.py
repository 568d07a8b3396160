"""docs/results.md's ablation tables from run_ablations.py's JSON
(``benchmarks/ablation_tables.py``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers.bench import BENCHMARKS, on_benchmarks_path


@pytest.fixture(scope="module")
def tables() -> Iterator[ModuleType]:
    with on_benchmarks_path():
        import ablation_tables

        yield ablation_tables


def _run(variant: str, grid: str, seed: int, avg: float, val: float) -> dict[str, object]:
    return {"variant": variant, "grid": grid, "seed": seed, "avg": avg, "val/avg": val}


REPORT = {
    "tune_seeds": [0],
    "chosen": {"dqe_cir": "lr=1", "contrastive": "lr=2", "no_margins": "lr=1"},
    "grid_rows": [
        _run("dqe_cir", "lr=1", 0, 50.0, 60.0),
        _run("dqe_cir", "lr=2", 0, 55.0, 59.0),  # better on test, not chosen
        _run("contrastive", "lr=1", 0, 40.0, 50.0),
        _run("contrastive", "lr=2", 0, 45.0, 52.0),
        _run("dqe_cir", "lr=1", 1, 52.0, 61.0),  # not a tuning seed
        _run("no_margins", "lr=1", 0, 49.0, 60.0),  # took DQE-CIR's choice
    ],
    "rows": [
        {"variant": "zero_shot", "seed": -1, "avg": 10.0, "recall@1": 2.0},
        {**_run("dqe_cir", "lr=1", 0, 50.0, 60.0), "negatives/false_negative_rate": 0.001},
        {**_run("dqe_cir", "lr=1", 1, 52.0, 61.0), "negatives/false_negative_rate": 0.003},
        {**_run("dqe_cir", "lr=1", 2, 57.0, 62.0), "negatives/false_negative_rate": 0.002},
        _run("contrastive", "lr=2", 0, 45.0, 52.0),
        _run("contrastive", "lr=2", 1, 47.0, 53.0),
    ],
}


def _line(table: str, starts: str) -> list[str]:
    row = next(r for r in table.splitlines() if r.startswith(starts))
    return [c.strip() for c in row.strip("|").split("|")]


def test_tuning_table_marks_the_val_choice_and_skips_inherited(tables: ModuleType) -> None:
    out = tables.tuning_table(REPORT)
    assert _line(out, "| objective") == [
        "objective",
        "val avg, lr=1",
        "val avg, lr=2",
        "chosen",
        "test avg, lr=1",
        "test avg, lr=2",
    ]
    assert _line(out, "| **DQE-CIR**") == [
        "**DQE-CIR**",
        "**60.0**",
        "59.0",
        "lr=1",
        "50.0",
        "55.0",
    ]
    assert _line(out, "| in-batch") == [
        "in-batch contrastive",
        "50.0",
        "**52.0**",
        "lr=2",
        "40.0",
        "45.0",
    ]
    assert "w/o margins" not in out  # one combination only: it was not tuned


def test_main_table_mean_and_sample_std_over_the_chosen_seeds(tables: ModuleType) -> None:
    out = tables.main_table(REPORT)
    dqe = _line(out, "| **DQE-CIR** (3)")
    # avg over 50, 52, 57: mean 53.0, sample std sqrt(13) = 3.6; rate in percent
    assert dqe[:4] == ["**DQE-CIR** (3)", "lr=1", "61.0 ± 1.0", "53.0 ± 3.6"]
    assert dqe[-1] == "0.20 ± 0.10"
    assert dqe[4] == "-"  # no recall@1 in these rows
    assert _line(out, "| zero-shot (-)")[:5] == ["zero-shot (-)", "-", "-", "10.0", "2.0"]
    two = tables.main_table(REPORT, seeds=[0, 1])
    assert _line(two, "| **DQE-CIR** (2)")[3] == "51.0 ± 1.4"
    assert "zero-shot (-)" in two  # floors have no seed and always show
    # the table's order, not the file's: floors, DQE-CIR, then the rest
    names = [r.split("|")[1].strip() for r in out.splitlines()[2:]]
    assert names == ["zero-shot (-)", "**DQE-CIR** (3)", "in-batch contrastive (2)"]


def _diff(variant: str, metric: str, diff: float, low: float, high: float) -> dict[str, object]:
    return {
        "variant": variant,
        "metric": metric,
        "diff": diff,
        "low": low,
        "high": high,
        "seeds": 3,
        "queries": 400,
        "families": 100,
    }


COMPARE = {
    "baseline": "dqe_cir",
    "n_boot": 1000,
    "comparisons": [
        _diff("no_margins", "avg", -0.04, -0.9, 0.8),
        _diff("contrastive", "avg", -1.66, -2.7, -0.61),
        _diff("contrastive", "recall@1", 1.25, 0.2, 2.3),
    ],
}


def test_difference_table_bolds_intervals_that_exclude_zero(tables: ModuleType) -> None:
    out = tables.difference_table(COMPARE, metrics=["avg", "recall@1"])
    assert _line(out, "| variant") == ["variant − DQE-CIR", "avg", "recall@1"]
    assert _line(out, "| in-batch") == [
        "in-batch contrastive",
        "**-1.7 [-2.7, -0.6]**",
        "**+1.2 [+0.2, +2.3]**",
    ]
    assert _line(out, "| w/o margins") == ["w/o margins", "-0.0 [-0.9, +0.8]", "-"]
    # contrastive listed before w/o margins (the table's order)
    assert out.index("in-batch") < out.index("w/o margins")
    assert out.splitlines()[-1] == "100 families, 400 queries, 3 seeds, 1000 replicates"
    errors = [
        {"variant": v, "seed": 0, "metric": m, "value": 50.0, "se": se}
        for v, m, se in [("a", "avg", 0.31), ("b", "avg", 0.39), ("a", "recall@1", 0.2)]
    ]
    with_errors = tables.difference_table({**COMPARE, "sampling_errors": errors}, ["avg"])
    assert with_errors.splitlines()[-1].endswith("test split alone: avg 0.39")


def test_command_line_prints_all_three(tmp_path: Path) -> None:
    report, compare = tmp_path / "report.json", tmp_path / "compare.json"
    report.write_text(json.dumps(REPORT))
    compare.write_text(json.dumps(COMPARE))
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ablation_tables.py"), str(report), str(compare)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.index("| objective") < out.index("| variant (seeds)") < out.index("| variant −")
