"""Per-query results of the ablations and their paired comparison with DQE-CIR.

``run_ablations.py`` writes one Parquet file per (variant, seed): the test queries' ranks
(``rank``, ``subset_rank``; on a split with several valid targets also ``n_valid``,
``rank_any``, ``ap@K``), under ``<dir>/<variant>/seed<k>.parquet`` (runs of a ``--grid``
tuning under ``<dir>/grid/<variant>/<combination>/``). ``--compare <dir>`` reads them
back and reports, per variant, the difference to the baseline in every headline metric
with a paired bootstrap interval over queries (or, given each query's scene family,
over whole families) and seeds (``dqe_cir_pipeline.stats``). A comparison needs the
same seeds and, per seed, the same queries on both sides.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dqe_cir_pipeline.stats import paired_bootstrap, standard_error

#: Metrics compared on every split (the generated benchmark's protocol: CIRR's
#: ``avg`` = (R@5 + Rs@1) / 2).
HEADLINE: tuple[str, ...] = ("avg", "recall@1", "recall@5", "recall@10", "recall_subset@1")
#: Compared too where the per-query files carry the multi-target columns.
MULTI_HEADLINE: tuple[str, ...] = ("recall_any@1", "recall_any@10", "map@10", "map@50")
#: The per-query columns kept from an evaluation (those present).
KEPT = ("query_id", "edit_type", "rank", "subset_rank", "n_valid", "rank_any")
#: The sub-folder of the tuning runs' files.
GRID_DIR = "grid"


def slug(name: str) -> str:
    """A file-name-safe form of a variant or grid-combination name."""
    return re.sub(r"[^A-Za-z0-9_.@-]+", "_", name).strip("_") or "_"


def query_path(root: Path, variant: str, seed: int, grid: str = "") -> Path:
    """Where the per-query file of ``variant`` (grid combination ``grid``) at ``seed`` goes."""
    folder = root / GRID_DIR / slug(variant) / slug(grid) if grid else root / slug(variant)
    return folder / f"seed{seed}.parquet"


def write_queries(
    root: Path, per_query: pd.DataFrame, variant: str, seed: int, grid: str = ""
) -> Path:
    """Write one run's per-query ranks (:data:`KEPT` and ``ap@K`` columns)."""
    keep = [c for c in per_query.columns if c in KEPT or c.startswith("ap@")]
    frame = per_query[keep].copy()
    frame.insert(0, "seed", int(seed))
    frame.insert(0, "grid", grid)
    frame.insert(0, "variant", variant)
    path = query_path(root, variant, seed, grid)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return path


def read_queries(root: Path) -> pd.DataFrame:
    """Every final (not tuning) per-query file under ``root``, stacked."""
    files = sorted(p for p in root.glob("*/seed*.parquet") if p.parent.name != GRID_DIR)
    if not files:
        raise FileNotFoundError(f"no per-query files <variant>/seed<k>.parquet under {root}")
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)


def query_scores(frame: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-query values (0-1) whose mean over queries is ``metric``; NaN where the
    columns it needs are absent."""

    def hit(col: str, k: int) -> np.ndarray:
        if col not in frame or frame[col].isna().any():
            return np.full(len(frame), np.nan)
        ranks = frame[col].to_numpy(dtype=np.int64)
        return ((ranks >= 0) & (ranks < k)).astype(np.float64)

    name, _, k = metric.partition("@")
    if metric == "avg":
        return (hit("rank", 5) + hit("subset_rank", 1)) / 2.0
    if name in ("recall", "recall_subset", "recall_any"):
        col = {"recall": "rank", "recall_subset": "subset_rank", "recall_any": "rank_any"}[name]
        return hit(col, int(k))
    if name == "map":
        col = f"ap@{k}"
        return (
            frame[col].to_numpy(dtype=np.float64) if col in frame else np.full(len(frame), np.nan)
        )
    raise ValueError(f"no per-query form of {metric!r}")


def _matrix(frame: pd.DataFrame, metric: str, seeds: list[int], queries: list[str]) -> np.ndarray:
    """(S, N) per-query values, rows by ``seeds``, columns by ``queries``."""
    out = np.empty((len(seeds), len(queries)))
    for s, seed in enumerate(seeds):
        part = frame[frame["seed"] == seed].set_index("query_id")
        out[s] = query_scores(part.loc[queries].reset_index(), metric)
    return out


def _layout(frame: pd.DataFrame, name: str) -> tuple[list[int], dict[int, list[str]]]:
    """The seeds of one variant and, per seed, its queries (each once)."""
    seeds = sorted(int(s) for s in set(frame["seed"]))
    queries: dict[int, list[str]] = {}
    for seed in seeds:
        ids = frame.loc[frame["seed"] == seed, "query_id"].astype(str).tolist()
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}, seed {seed}: a query appears twice")
        queries[seed] = ids
    return seeds, queries


def check_paired(base: pd.DataFrame, other: pd.DataFrame, baseline: str, variant: str) -> None:
    """Refuse a comparison whose sides differ in seeds or, for some seed, in queries."""
    b_seeds, b_queries = _layout(base, baseline)
    o_seeds, o_queries = _layout(other, variant)
    if b_seeds != o_seeds:
        raise ValueError(
            f"{variant} ran seeds {o_seeds}, {baseline} {b_seeds}: a paired comparison needs "
            "the same seeds (run both with the same --seeds)"
        )
    for seed in b_seeds:
        if set(b_queries[seed]) != set(o_queries[seed]):
            raise ValueError(
                f"{variant} and {baseline} were evaluated on different queries at seed {seed}: "
                "a paired comparison needs the same test split (same data settings and --tier)"
            )


def compare(
    frame: pd.DataFrame,
    baseline: str = "dqe_cir",
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    families: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Per variant and headline metric: variant - baseline in points, with its paired
    bootstrap interval over queries and seeds; with ``families`` (query id -> its scene
    family), over whole families and seeds.

    Raises:
        ValueError: The baseline is missing, a variant's seeds or queries differ, or a
            query has no family.
    """
    if baseline not in set(frame["variant"]):
        raise ValueError(f"no per-query results of the baseline {baseline!r}")
    base = frame[frame["variant"] == baseline]
    seeds, queries = _layout(base, baseline)
    order = queries[seeds[0]]
    clusters = None if families is None else _clusters(order, families)
    multi = "rank_any" in base and base["rank_any"].notna().all()
    metrics = HEADLINE + (MULTI_HEADLINE if multi else ())
    out: list[dict[str, Any]] = []
    for variant in dict.fromkeys(frame["variant"]):
        if variant == baseline:
            continue
        other = frame[frame["variant"] == variant]
        check_paired(base, other, baseline, variant)
        for metric in metrics:
            a = _matrix(base, metric, seeds, order)
            b = _matrix(other, metric, seeds, order)
            if np.isnan(a).any() or np.isnan(b).any():
                continue
            iv = paired_bootstrap(
                a, b, n_boot=n_boot, confidence=confidence, seed=seed, clusters=clusters
            )
            out.append(
                {
                    "variant": variant,
                    "metric": metric,
                    "baseline": float(a.mean() * 100),
                    "value": float(b.mean() * 100),
                    "diff": iv.estimate,
                    "low": iv.low,
                    "high": iv.high,
                    "seeds": len(seeds),
                    "queries": len(order),
                    "families": 0 if clusters is None else len(set(clusters)),
                }
            )
    return out


def sampling_errors(
    frame: pd.DataFrame, families: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Per (variant, seed, headline metric): the run's value and its sampling standard
    error over the test queries, in points (cluster-robust over scene families when
    ``families`` is given): how far the test split alone can move one run's number."""
    out: list[dict[str, Any]] = []
    for (variant, seed), part in frame.groupby(["variant", "seed"], sort=False):
        part = part.reset_index(drop=True)
        multi = "rank_any" in part and part["rank_any"].notna().all()
        ids = part["query_id"].astype(str).tolist()
        clusters = None if families is None else _clusters(ids, families)
        for metric in HEADLINE + (MULTI_HEADLINE if multi else ()):
            x = query_scores(part, metric)
            if np.isnan(x).any():
                continue
            out.append(
                {
                    "variant": variant,
                    "seed": int(seed),
                    "metric": metric,
                    "value": float(x.mean() * 100),
                    "se": standard_error(x, clusters),
                }
            )
    return out


def largest_errors(errors: list[dict[str, Any]]) -> dict[str, float]:
    """Metric -> the largest standard error of any run in :func:`sampling_errors`."""
    out: dict[str, float] = {}
    for e in errors:
        out[e["metric"]] = max(out.get(e["metric"], 0.0), float(e["se"]))
    return out


def _clusters(queries: list[str], families: Mapping[str, str]) -> np.ndarray:
    """Each query's family label, in ``queries``' order."""
    missing = [q for q in queries if str(q) not in families]
    if missing:
        raise ValueError(
            f"{len(missing)} queries have no scene family (e.g. {missing[:3]}): the per-query "
            "files and the benchmark's test captions differ (same --tier, --data, --workdir?)"
        )
    return np.array([families[str(q)] for q in queries])


def compare_table(results: list[dict[str, Any]], baseline: str) -> str:
    """Markdown: one row per variant, ``diff [low, high]`` per metric (points)."""
    if not results:
        return f"(no variant besides {baseline})"
    df = pd.DataFrame(results)
    metrics = list(dict.fromkeys(df["metric"]))
    lines = [
        f"| variant - {baseline} | " + " | ".join(metrics) + " |",
        "|---" * (len(metrics) + 1) + "|",
    ]
    for variant, g in df.groupby("variant", sort=False):
        cells = g.set_index("metric")
        row = [
            f"{cells.loc[m, 'diff']:+.2f} [{cells.loc[m, 'low']:+.2f}, {cells.loc[m, 'high']:+.2f}]"
            if m in cells.index
            else "-"
            for m in metrics
        ]
        lines.append(f"| {variant} | " + " | ".join(row) + " |")
    return "\n".join(lines)
