"""Bootstrap confidence intervals for retrieval metrics that are means over queries.

Inputs are per-query scores on a 0-1 scale (hit@K as 0/1, AP@K), one row per training
seed: arrays (S, N), or (N,) for a single seed. A replicate resamples seeds and queries
with replacement; a comparison of two methods is paired (the same resampled seeds and
queries for both). Where queries come in correlated groups (the generated benchmark's
scene families: four queries share a reference and its look-alikes), ``clusters`` makes a
replicate draw whole groups instead of single queries (a cluster bootstrap), so the
interval is not narrowed by counting one scene four times. Results are in points
(percent). NumPy only: benchmarks and reporting use it, the model code does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Interval",
    "bootstrap_mean",
    "bootstrap_replicates",
    "cluster_index",
    "paired_bootstrap",
    "standard_error",
]

# replicates drawn per batch: bounds the (batch, N) count matrix to ~16 MiB of float64
_BATCH_CELLS = 1 << 21


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval, in points."""

    estimate: float
    low: float
    high: float
    confidence: float
    n_boot: int


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be (N,) or (S, N) with S, N >= 1; got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} has non-finite values")
    return arr


def _counts(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """(rows, n) how often each index is drawn in ``rows`` resamples of size ``n``."""
    idx = rng.integers(0, n, size=(rows, n)) + n * np.arange(rows)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def cluster_index(clusters: np.ndarray | None, n: int) -> np.ndarray | None:
    """``clusters`` (N,) labels -> (N,) indices 0..C-1 (``None`` stays ``None``)."""
    if clusters is None:
        return None
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise ValueError(f"clusters must label each of the {n} queries; got shape {labels.shape}")
    return np.unique(labels, return_inverse=True)[1].reshape(n)


def bootstrap_replicates(
    scores: np.ndarray,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    resample_seeds: bool = True,
    clusters: np.ndarray | None = None,
) -> np.ndarray:
    """(n_boot,) means of ``scores`` over resampled seeds x queries, on the input scale.

    Each replicate draws S seeds and N queries with replacement (the seeds only when
    ``resample_seeds``) and averages ``scores[s, q]`` over every drawn pair. With
    ``clusters`` ((N,) labels, e.g. each query's scene family) it draws C of the C
    clusters instead and keeps every query of a drawn cluster (the mean is over the
    queries drawn, so clusters of unequal size are weighted by their size). The draws
    depend only on ``seed``, the shape, ``resample_seeds`` and the clusters: two arrays
    of the same shape resampled with the same ``seed`` share their indices (a paired
    comparison).
    """
    d = _as_scores(scores, "scores")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot} must be >= 1")
    s, n = d.shape
    groups = cluster_index(clusters, n)
    units = n if groups is None else int(groups.max()) + 1
    rng = np.random.default_rng(seed)
    batch = max(1, _BATCH_CELLS // max(n, units))
    out = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, batch):
        rows = min(batch, n_boot - start)
        w_seed = _counts(rng, rows, s) if resample_seeds else np.ones((rows, s))
        drawn = _counts(rng, rows, units)
        w_query = drawn if groups is None else drawn[:, groups]
        # sum over drawn (seed, query) pairs of d = w_seed @ d @ w_query, per replicate
        total = ((w_seed @ d) * w_query).sum(axis=1)
        out[start : start + rows] = total / (s * w_query.sum(axis=1))
    return out


def _interval(
    estimate: float, reps: np.ndarray, confidence: float, scale: float, n_boot: int
) -> Interval:
    low, high = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(
        estimate=float(estimate * scale),
        low=float(low * scale),
        high=float(high * scale),
        confidence=confidence,
        n_boot=n_boot,
    )


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")


def bootstrap_mean(
    scores: np.ndarray,
    *,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
    scale: float = 100.0,
    clusters: np.ndarray | None = None,
) -> Interval:
    """A metric that is a mean over queries (and seeds), with its percentile interval.

    ``scores``: (S, N) or (N,) per-query values, e.g. hit@10 as 0/1 for Recall@10, AP@K
    for mAP@K, (hit@5 + subset hit@1) / 2 for CIRR's average. ``scale`` turns the 0-1
    scale into points (pass 1.0 for scores already in percent). ``clusters``: see
    :func:`bootstrap_replicates`.
    """
    _check_confidence(confidence)
    d = _as_scores(scores, "scores")
    reps = bootstrap_replicates(
        d, n_boot=n_boot, seed=seed, resample_seeds=resample_seeds, clusters=clusters
    )
    return _interval(float(d.mean()), reps, confidence, scale, n_boot)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_boot: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
    resample_seeds: bool = True,
    scale: float = 100.0,
    clusters: np.ndarray | None = None,
) -> Interval:
    """Mean difference B - A of two methods on the same seeds and queries, with its
    percentile interval, in points.

    ``a``, ``b``: (S, N) or (N,) per-query scores, row s of both from the same seed and
    column q from the same query. Every replicate resamples the same seeds and queries for
    both methods, so the query-to-query variation they share cancels. ``clusters``: see
    :func:`bootstrap_replicates`.
    """
    _check_confidence(confidence)
    da, db = _as_scores(a, "a"), _as_scores(b, "b")
    if da.shape != db.shape:
        raise ValueError(f"a and b differ in shape: {da.shape} vs {db.shape}")
    diff = db - da  # the mean is linear: resampling B - A is resampling both, paired
    reps = bootstrap_replicates(
        diff, n_boot=n_boot, seed=seed, resample_seeds=resample_seeds, clusters=clusters
    )
    return _interval(float(diff.mean()), reps, confidence, scale, n_boot)


def standard_error(
    scores: np.ndarray, clusters: np.ndarray | None = None, scale: float = 100.0
) -> float:
    """Sampling standard error of a mean over queries (one seed), in points.

    ``scores``: (N,) per-query values. Without ``clusters``: s / sqrt(N). With (N,)
    cluster labels, the cluster-robust (sandwich) form sqrt(G / (G - 1) * sum over
    clusters of (sum of its residuals)^2) / N, G the number of clusters: it equals
    s / sqrt(N) when every query is its own cluster and grows when queries of a cluster
    move together (m exact copies of each: the standard error of the G distinct values).
    """
    x = _as_scores(scores, "scores")
    if x.shape[0] != 1:
        raise ValueError(f"scores must be one seed's (N,) values; got {x.shape}")
    x = x[0]
    n = x.shape[0]
    idx = cluster_index(clusters, n)
    if idx is None:
        idx = np.arange(n)
    g = int(idx.max()) + 1
    if g < 2:
        raise ValueError("a standard error needs at least 2 queries (or clusters)")
    per_cluster = np.bincount(idx, weights=x - x.mean(), minlength=g)
    return float(np.sqrt(g / (g - 1) * (per_cluster**2).sum()) / n * scale)
