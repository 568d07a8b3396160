"""The ablations' run plan (``benchmarks/_ablation_grid.py``): tuning first, the choice on
the tuning seeds' val, the baseline's ablations at its choice, seed-by-seed order, and
``--resume``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pytest

from tests.helpers.bench import on_benchmarks_path

KNOWN = {
    "dqe_cir": ({}, {}),
    "contrastive": ({"loss": {"objective": "batch_kl"}}, {}),
    "no_margins": ({"loss": {"use_margins": False}}, {}),
}


@pytest.fixture(scope="module")
def grid() -> Iterator[ModuleType]:
    with on_benchmarks_path():
        import _ablation_grid

        yield _ablation_grid


def _plan(grid: ModuleType) -> Any:
    tuned = grid.plan_jobs(KNOWN, ["dqe_cir", "contrastive"], ["optim.lr=1e-3,3e-3"])
    return grid.Plan(
        known=KNOWN,
        tuned=tuned,
        grid=["optim.lr=1e-3,3e-3"],
        tune=[0],
        seeds=[0, 1, 2],
        inherit=["no_margins"],
    )


def _keys(runs: list[tuple[Any, int]]) -> list[tuple[str, str, int]]:
    return [(j.variant, j.grid, s) for j, s in runs]


def _row(variant: str, combo: str, seed: int, val: float) -> dict[str, Any]:
    return {"variant": variant, "grid": combo, "seed": seed, "val/avg": val}


def test_tuning_runs_come_first_then_the_choices_release_the_rest_seed_by_seed(
    grid: ModuleType,
) -> None:
    plan = _plan(grid)
    assert _keys(plan.pending([])) == [
        ("dqe_cir", "lr=1e-3", 0),
        ("dqe_cir", "lr=3e-3", 0),
        ("contrastive", "lr=1e-3", 0),
        ("contrastive", "lr=3e-3", 0),
    ]
    # the baseline's tuning is done (3e-3 wins on val): its other seeds and its ablations
    # at its combination can start; contrastive is still tuning
    rows = [_row("dqe_cir", "lr=1e-3", 0, 50), _row("dqe_cir", "lr=3e-3", 0, 52)]
    assert plan.choices(rows) == {"dqe_cir": "lr=3e-3", "no_margins": "lr=3e-3"}
    assert _keys(plan.pending(rows)) == [
        ("contrastive", "lr=1e-3", 0),
        ("contrastive", "lr=3e-3", 0),
        ("no_margins", "lr=3e-3", 0),
        ("dqe_cir", "lr=3e-3", 1),
        ("no_margins", "lr=3e-3", 1),
        ("dqe_cir", "lr=3e-3", 2),
        ("no_margins", "lr=3e-3", 2),
    ]
    inherited = next(j for j, _ in plan.pending(rows) if j.variant == "no_margins")
    assert inherited.overrides == ({"loss": {"use_margins": False}, "optim": {"lr": "3e-3"}}, {})
    # later seeds' val never re-opens the choice (a bad seed 1 of the chosen combination)
    rows += [_row("dqe_cir", "lr=3e-3", 1, 10), _row("contrastive", "lr=1e-3", 0, 40)]
    rows += [_row("contrastive", "lr=3e-3", 0, 39)]
    assert plan.choices(rows)["dqe_cir"] == "lr=3e-3"
    assert plan.choices(rows)["contrastive"] == "lr=1e-3"
    assert ("contrastive", "lr=1e-3", 1) in _keys(plan.pending(rows))
    assert ("dqe_cir", "lr=3e-3", 1) not in _keys(plan.pending(rows))
    # everything done: nothing pending
    for job, seed in plan.pending(rows):
        rows.append(_row(job.variant, job.grid, seed, 0))
    assert plan.pending(rows) == []
    assert len(rows) == 4 + 2 * 2 + 3  # tuning, two variants x two more seeds, no_margins x 3


def test_resume_keeps_the_runs_with_their_files_and_refuses_another_setup(
    grid: ModuleType, tmp_path: Path
) -> None:
    queries = tmp_path / "queries"
    frame = pd.DataFrame({"query_id": ["q0"], "rank": [0]})
    kept = grid.query_path(queries, "dqe_cir", 0, "lr=1e-3")
    kept.parent.mkdir(parents=True)
    frame.to_parquet(kept)
    record = {"tier": "ambiguous", "data": [], "epochs": None}
    rows = [
        {"variant": "text_blind", "seed": -1, "avg": 1.0},
        _row("dqe_cir", "lr=1e-3", 0, 50),
        _row("dqe_cir", "lr=3e-3", 0, 52),  # its per-query file was never written
    ]
    out = tmp_path / "out.json"
    assert grid.resumed_rows(out, queries, record) == []
    out.write_text(json.dumps({"setup": record, "rows": rows}))
    got = grid.resumed_rows(out, queries, record)
    assert [grid.run_key(r) for r in got] == [("text_blind", "", -1), ("dqe_cir", "lr=1e-3", 0)]
    with pytest.raises(ValueError, match="holds runs of"):
        grid.resumed_rows(out, queries, {**record, "epochs": 3})
    # a changed parameter hash is another setup; a file that never recorded one resumes
    out.write_text(json.dumps({"setup": {**record, "params": "a1"}, "rows": rows}))
    with pytest.raises(ValueError, match="holds runs of"):
        grid.resumed_rows(out, queries, {**record, "params": "b2"})
    out.write_text(json.dumps({"setup": record, "rows": rows}))
    assert len(grid.resumed_rows(out, queries, {**record, "params": "b2"})) == 2
