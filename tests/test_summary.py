"""The end-of-run summary: each benchmark's tables come from its protocol, and a run whose
mined negatives mostly came from a fallback says so."""

from __future__ import annotations

from typing import Any

import numpy as np

from dqe_cir_pipeline.hooks.summary import (
    SummaryHooks,
    headline,
    mining_lines,
    mining_passes,
)
from dqe_cir_pipeline.model.mining_result import MiningResult
from dqe_cir_pipeline.model.negatives import MiningConfig
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol
from dqe_cir_pipeline.tracking import metric_history, metric_values


def _models(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    return {
        "dqe_cir": {**metrics, "weights/color/color": 0.5, "weights/color/base": 0.3,
                    "weights/color/shape": 0.2},
        "zero_shot": {k: v / 2 for k, v in metrics.items()},
    }  # fmt: skip


def _summary(dataset: str, metrics: dict[str, float]) -> dict[str, Any]:
    return {"dataset": dataset, "split": "val", "queries": 6, "gallery": 30,
            "backbone": "b", "models": _models(metrics)}  # fmt: skip


def _cells(table: str, label: str) -> list[str]:
    """The cells of the row starting with ``label``, the first such row."""
    line = next(line for line in table.splitlines() if line.startswith(label))
    return line[len(label) :].split()


def test_fashioniq_shows_its_means_and_categories_and_no_nan() -> None:
    # the keys model.retrieval.fashioniq_metrics_from_ranks writes
    metrics = {"avg": 30.0, "mean/recall@10": 20.0, "mean/recall@50": 40.0}
    for i, cat in enumerate(("dress", "shirt", "toptee")):
        metrics |= {f"{cat}/recall@10": 10.0 + i, f"{cat}/recall@50": 30.0 + i}
    table = headline(_summary("fashioniq", metrics))
    assert "nan" not in table
    lines = table.splitlines()
    assert lines[0] == "fashioniq val: 6 queries, gallery 30"
    assert lines[1].split() == ["model", "mean/recall@10", "mean/recall@50", "avg"]
    assert _cells(table, "dqe_cir") == ["20.0", "40.0", "30.0"]
    r10 = next(i for i, x in enumerate(lines) if x.startswith("R@10 by category"))
    assert lines[r10].split()[3:] == ["dress", "shirt", "toptee", "mean"]  # the mean last
    assert lines[r10 + 1].split() == ["dqe_cir", "10.0", "11.0", "12.0", "20.0"]
    r50 = next(i for i, x in enumerate(lines) if x.startswith("R@50 by category"))
    assert lines[r50 + 1].split() == ["dqe_cir", "30.0", "31.0", "32.0", "40.0"]
    assert "by edit" not in table and "weights" not in table  # categories are no edit types
    # the longer titles widen the label column of every row alike: columns stay aligned
    assert len({len(line) for line in lines[1:4]}) == 1
    assert len({len(line) for line in lines[4:]}) == 1


def test_cirr_shows_recall_and_every_subset_recall() -> None:
    metrics = {f"recall@{k}": float(k) for k in (1, 5, 10, 50)}
    metrics |= {f"recall_subset@{k}": 60.0 + k for k in (1, 2, 3)} | {"avg": 33.0}
    table = headline(_summary("cirr", metrics))
    assert "nan" not in table and "by " not in table and "weights" not in table
    assert table.splitlines()[1].split()[1:] == [
        "recall@1", "recall@5", "recall@10", "recall@50",
        "recall_subset@1", "recall_subset@2", "recall_subset@3", "avg",
    ]  # fmt: skip
    cells = ["1.0", "5.0", "10.0", "50.0", "61.0", "62.0", "63.0", "33.0"]
    assert _cells(table, "dqe_cir") == cells


SYNTHETIC = """\
synthetic val: 6 queries, gallery 30
model                recall@1         recall@5        recall@10        recall@50  recall_subset@1              avg
dqe_cir                  10.0             20.0             30.0             40.0             50.0             35.0
zero_shot                 5.0             10.0             15.0             20.0             25.0             17.5
R@10 by edit            color            shape
dqe_cir                  31.0             29.0
zero_shot                15.5             14.5
weights                  base            color            shape  (dqe_cir)
color edits              0.30             0.50             0.20"""  # noqa: E501


def test_the_synthetic_summary_keeps_its_tables() -> None:
    metrics = {"recall@1": 10.0, "recall@5": 20.0, "recall@10": 30.0, "recall@50": 40.0,
               "recall_subset@1": 50.0, "recall_subset@2": 55.0, "avg": 35.0,
               "color/recall@10": 31.0, "shape/recall@10": 29.0, "color/recall@1": 1.0,
               "color/count": 3.0, "shape/count": 3.0}  # fmt: skip
    assert headline(_summary("synthetic", metrics)) == SYNTHETIC


def test_the_protocol_decides_not_the_dataset_name() -> None:
    summary = _summary("unregistered", {"recall@1": 1.0, "avg": 2.0, "a/recall@1": 3.0})
    table = headline(summary)  # an unknown benchmark: the plain columns, no breakdown
    assert table.splitlines()[1].split()[1:] == [
        "recall@1", "recall@5", "recall@10", "recall@50", "avg"
    ]  # fmt: skip
    only = BenchmarkProtocol(summary_metrics=("a/recall@1",))
    assert headline(summary, only).splitlines()[2].split() == ["dqe_cir", "3.0"]


def _result(fallback: list[int]) -> MiningResult:
    n = len(fallback)
    return MiningResult(
        candidates=np.full((n, 1), -1), deltas=np.full((n, 1), np.nan),
        zone_size=np.zeros(n, dtype=np.int64), lower=np.full(n, np.nan),
        upper=np.full(n, np.nan), pool_size=np.ones(n, dtype=np.int64),
        fallback=np.asarray(fallback, dtype=np.int8), widenings=np.zeros(n, dtype=np.int8),
    )  # fmt: skip


def _run_metrics(initial: list[int], refreshes: dict[int, list[int]]) -> dict[str, Any]:
    """The metrics the negative_mining and training nodes return for these passes."""
    records = [{"epoch": float(e), **_result(fb).summary()} for e, fb in refreshes.items()]
    return {
        **metric_values(_result(initial).summary(), prefix="mining/initial."),
        **metric_history(records, prefix="mining/refresh."),
    }


def test_the_summary_names_the_fallback_share_and_warns_above_the_threshold() -> None:
    # outcome codes: 0 none, 1 widened, 2 hardest_below, 3 random
    metrics = _run_metrics([2, 2, 2, 0], {0: [2, 2, 2, 0], 3: [0, 1, 2, 3]})
    passes = mining_passes(metrics)
    assert [label for label, _ in passes] == ["initial mining", "last refresh at epoch 3"]
    lines = mining_lines(passes, "midzone")
    assert lines[0] == (
        "negatives from a fallback (midzone): initial mining 75.0%; last refresh at epoch 3 50.0%"
    )
    assert lines[1:] == [
        "WARNING (initial mining): 75% of queries fell back (3 to hardest_below): "
        "this run is not training with mid-zone negatives"
    ]  # the last refresh is at the threshold, not above it
    assert len(mining_lines(passes, "midzone", threshold=0.4)) == 3
    assert mining_lines(passes, "midzone", threshold=0.8) == lines[:1]
    # epoch 0 is the initial pass again: not shown twice
    assert len(mining_passes(_run_metrics([0, 0], {0: [0, 0]}))) == 1
    assert mining_lines([], "midzone") == []


def test_the_hook_gathers_the_mining_metrics_of_the_run_nodes() -> None:
    hooks = SummaryHooks()
    hooks.before_pipeline_run()
    metrics = _run_metrics([2, 2], {2: [0, 0]})
    initial = {k: v for k, v in metrics.items() if k.startswith("mining/initial.")}
    hooks.after_node_run({"params:mining": MiningConfig(strategy="qure")}, {"m": initial})
    hooks.after_node_run({}, {"t": {**metrics, "train/loss": []}, "table": [1]})
    assert hooks.strategy == "qure"
    lines = mining_lines(mining_passes(hooks.mining), hooks.strategy)
    assert "initial mining 100.0%; last refresh at epoch 2 0.0%" in lines[0]
    assert lines[1].endswith("this run is not training with QuRe negatives")


def test_a_multi_target_split_adds_the_valid_target_table_and_the_false_negative_line() -> None:
    single = {"recall@1": 20.0, "recall@5": 50.0, "recall@10": 70.0, "recall@50": 95.0,
              "avg": 40.0}  # fmt: skip
    multi = {**single, "map@5": 31.0, "map@10": 33.0, "map@25": 34.0, "map@50": 35.0,
             "recall_any@1": 30.0, "recall_any@10": 80.0}  # fmt: skip
    plain = headline(_summary("toy", single), BenchmarkProtocol())
    assert "valid targets" not in plain and "mAP@10" not in plain
    table = headline(_summary("toy", multi), BenchmarkProtocol())
    header = _cells(table, "valid targets")
    assert header == ["mAP@5", "mAP@10", "mAP@25", "mAP@50", "R_any@1", "R_any@10"]
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("valid targets"))
    assert lines[start + 1].split() == ["dqe_cir", "31.0", "33.0", "34.0", "35.0", "30.0", "80.0"]
    assert lines[start + 2].split()[2] == "16.5"  # zero_shot: half of each value
    passes = [
        ("initial mining", {"fallback/none": 3.0, "fallback/random": 1.0,
                            "false_negative_rate": 0.125}),
        ("last refresh at epoch 2", {"fallback/none": 4.0, "false_negative_rate": 0.05}),
    ]  # fmt: skip
    assert mining_lines(passes, "midzone")[1] == (
        "negatives that are valid targets (false negatives): initial mining 12.5%; "
        "last refresh at epoch 2 5.0%"
    )
    assert all("false negatives" not in line for line in mining_lines(passes[:0], "midzone"))
