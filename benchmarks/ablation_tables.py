"""The ablation tables of docs/results.md, as Markdown, from ``run_ablations.py`` output.

Reads the ``--report`` JSON (every run's metrics, the tuning runs, the chosen
combinations) and the ``--compare`` JSON (paired differences with intervals) and prints
three tables: the tuning runs, the main table (mean ± sample std over seeds) and each
variant minus the baseline with its 95 % interval (bold where it excludes 0).

Usage::

    python benchmarks/ablation_tables.py docs/figures/ablations_ambiguous_cpu.json \\
        docs/figures/ablations_ambiguous_compare_cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _ablation_compare import largest_errors

NAMES = {
    "text_blind": "text-blind (pixels)",
    "zero_shot": "zero-shot",
    "untrained": "untrained",
    "dqe_cir": "**DQE-CIR**",
    "contrastive": "in-batch contrastive",
    "pairwise_kl": "pairwise objective with KL and margins (the paper's)",
    "no_attr_weights": "w/o attribute weights",
    "no_trns": "random negatives (w/o TRNS)",
    "hardest_negatives": "hardest negatives",
    "qure_negatives": "QuRe's negatives",
    "no_margins": "w/o margins",
}
# (report key, header, decimals, scale)
MAIN_COLUMNS = [
    ("avg", "avg", 1, 1.0),
    ("recall@1", "R@1", 1, 1.0),
    ("recall@10", "R@10", 1, 1.0),
    ("recall_subset@1", "Rs@1", 1, 1.0),
    ("recall_any@1", "R_any@1", 1, 1.0),
    ("recall_any@10", "R_any@10", 1, 1.0),
    ("map@10", "mAP@10", 1, 1.0),
    ("map@50", "mAP@50", 1, 1.0),
    ("negatives/false_negative_rate", "false negatives drawn, %", 2, 100.0),
]
DIFF_METRICS = [
    "avg",
    "recall@1",
    "recall@10",
    "recall_subset@1",
    "recall_any@1",
    "recall_any@10",
    "map@10",
    "map@50",
]


def _name(variant: str) -> str:
    return NAMES.get(variant, variant)


def _cell(values: Sequence[float], decimals: int) -> str:
    """``mean ± sample std``; one value alone; ``-`` when none is a number."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{decimals}f}"
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _values(rows: Sequence[dict[str, Any]], key: str, scale: float = 1.0) -> list[float]:
    return [float(r.get(key, math.nan)) * scale for r in rows]


def _variants(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Known variants in the table's order, then any other in order of appearance."""
    seen = list(dict.fromkeys(r["variant"] for r in rows))
    return [v for v in NAMES if v in seen] + [v for v in seen if v not in NAMES]


def tuning_table(report: dict[str, Any]) -> str:
    """One row per tuned variant: val and test ``avg`` of each combination at the tuning
    seeds, and the combination val chose (test shown, not used)."""
    tune_seeds = set(report.get("tune_seeds") or [])
    rows = [r for r in report.get("grid_rows", []) if r["seed"] in tune_seeds]
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    if not rows or len(grids) < 2:
        return ""
    head = ["objective"] + [f"val avg, {g}" for g in grids] + ["chosen"]
    head += [f"test avg, {g}" for g in grids]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    chosen = report.get("chosen", {})
    for v in _variants(rows):
        mine = [r for r in rows if r["variant"] == v]
        if len({r["grid"] for r in mine}) < 2:
            continue  # took another variant's choice
        val = [_cell(_values([r for r in mine if r["grid"] == g], "val/avg"), 1) for g in grids]
        val = [f"**{c}**" if g == chosen.get(v) else c for c, g in zip(val, grids, strict=True)]
        test = [_cell(_values([r for r in mine if r["grid"] == g], "avg"), 1) for g in grids]
        lines.append(f"| {_name(v)} | " + " | ".join([*val, chosen.get(v, "-"), *test]) + " |")
    return "\n".join(lines)


def main_table(report: dict[str, Any], seeds: Sequence[int] | None = None) -> str:
    """Floors (one evaluation each) and every variant over ``seeds`` (default: all)."""
    rows = [r for r in report["rows"] if r["seed"] < 0 or seeds is None or r["seed"] in seeds]
    chosen = report.get("chosen", {})
    head = ["variant (seeds)", "combination", "val avg"] + [h for _, h, _, _ in MAIN_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for v in _variants(rows):
        mine = [r for r in rows if r["variant"] == v]
        n = "-" if mine[0]["seed"] < 0 else str(len(mine))
        cells = [_cell(_values(mine, key, scale), d) for key, _, d, scale in MAIN_COLUMNS]
        val = _cell(_values(mine, "val/avg"), 1)
        lines.append(
            f"| {_name(v)} ({n}) | {chosen.get(v, '-')} | {val} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines)


def difference_table(compare: dict[str, Any], metrics: Sequence[str] = DIFF_METRICS) -> str:
    """Each variant minus the baseline, ``diff [low, high]`` in points."""
    res = compare["comparisons"]
    baseline = _name(compare["baseline"]).strip("*")
    lines = [
        f"| variant − {baseline} | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for v in _variants(res):
        by_metric = {r["metric"]: r for r in res if r["variant"] == v}
        cells = []
        for m in metrics:
            r = by_metric.get(m)
            if r is None:
                cells.append("-")
                continue
            bold = "**" if r["low"] > 0 or r["high"] < 0 else ""
            cells.append(f"{bold}{r['diff']:+.1f} [{r['low']:+.1f}, {r['high']:+.1f}]{bold}")
        lines.append(f"| {_name(v)} | " + " | ".join(cells) + " |")
    first = res[0] if res else {}
    lines.append("")
    lines.append(
        f"{first.get('families', '-')} families, {first.get('queries', '-')} queries, "
        f"{first.get('seeds', '-')} seeds, {compare.get('n_boot', '-')} replicates"
    )
    errors = compare.get("sampling_errors")
    if errors:
        largest = largest_errors(errors)
        lines.append(
            "largest standard error of one run's metric from the test split alone: "
            + ", ".join(f"{m} {largest[m]:.2f}" for m in metrics if m in largest)
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path, help="run_ablations.py --report JSON")
    ap.add_argument("compare", type=Path, nargs="?", help="run_ablations.py --compare JSON")
    ap.add_argument("--seeds", type=int, nargs="+", help="main table over these seeds only")
    args = ap.parse_args()
    report = json.loads(args.report.read_text())
    for part in (tuning_table(report), main_table(report, args.seeds)):
        if part:
            print(part, end="\n\n")
    if args.compare is not None:
        print(difference_table(json.loads(args.compare.read_text())))


if __name__ == "__main__":
    main()
