"""Bootstrap intervals against known answers."""

from __future__ import annotations

import numpy as np
import pytest

from dqe_cir_pipeline.stats import (
    bootstrap_mean,
    bootstrap_replicates,
    paired_bootstrap,
    standard_error,
)

Z_975 = 1.959963984540054  # standard normal 97.5 % quantile


def _bernoulli(p: float, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float64)


def test_identical_methods_give_zero_and_a_zero_width_interval() -> None:
    a = _bernoulli(0.3, (3, 500), seed=0)
    out = paired_bootstrap(a, a.copy(), n_boot=500)
    assert (out.estimate, out.low, out.high) == (0.0, 0.0, 0.0)
    assert (out.confidence, out.n_boot) == (0.95, 500)


@pytest.mark.parametrize("shape", [(400,), (4, 250)])
def test_constant_shift_is_recovered_exactly(shape: tuple[int, ...]) -> None:
    a = _bernoulli(0.5, shape, seed=1) * 0.5  # values 0 and 0.5
    out = paired_bootstrap(a, a + 0.25, n_boot=300)  # dyadic: exact in floating point
    assert (out.estimate, out.low, out.high) == (25.0, 25.0, 25.0)
    # any shift: equal up to rounding
    ap = np.random.default_rng(2).random(shape)
    out = paired_bootstrap(ap, ap + 0.037, n_boot=300)
    for value in (out.estimate, out.low, out.high):
        assert value == pytest.approx(3.7, abs=1e-9)


def test_large_bernoulli_matches_the_normal_approximation() -> None:
    n = 10_000
    a = _bernoulli(0.40, (n,), seed=3)
    b = _bernoulli(0.45, (n,), seed=4)
    d = b - a
    se = d.std() / np.sqrt(n)  # the bootstrap's plug-in standard error
    out = paired_bootstrap(a, b, n_boot=3000, seed=5)
    assert out.estimate == pytest.approx(100 * d.mean())
    # percentile endpoints of 3000 replicates: Monte Carlo error ~0.05 se
    assert out.low == pytest.approx(100 * (d.mean() - Z_975 * se), abs=100 * 0.15 * se)
    assert out.high == pytest.approx(100 * (d.mean() + Z_975 * se), abs=100 * 0.15 * se)
    # one method alone: Recall = mean hit, interval p +- 1.96 sqrt(p (1 - p) / n)
    one = bootstrap_mean(a, n_boot=3000, seed=6)
    p = a.mean()
    half = Z_975 * np.sqrt(p * (1 - p) / n)
    assert one.estimate == pytest.approx(100 * p)
    assert (one.high - one.low) / 2 == pytest.approx(100 * half, rel=0.08)


def test_pairing_narrows_the_interval_of_correlated_methods() -> None:
    n = 2000
    a = _bernoulli(0.5, (n,), seed=7)
    flips = _bernoulli(0.05, (n,), seed=8)  # B differs from A on ~5 % of the queries
    b = np.abs(a - flips)
    paired = paired_bootstrap(a, b, n_boot=2000, seed=9)
    # independent resampling: each method gets its own draws of the queries
    unpaired = bootstrap_replicates(b, n_boot=2000, seed=10) - bootstrap_replicates(
        a, n_boot=2000, seed=11
    )
    unpaired_low, unpaired_high = 100 * np.quantile(unpaired, [0.025, 0.975])
    paired_width = paired.high - paired.low
    # sd of the paired difference ~ sqrt(0.05 / n), of the unpaired ~ sqrt(2 * 0.25 / n):
    # about 3.2x narrower
    assert paired_width < 0.4 * (unpaired_high - unpaired_low)
    # the same seed resamples the same queries: replicates of B - A = those of B minus A's
    np.testing.assert_allclose(
        bootstrap_replicates(b, n_boot=200, seed=9) - bootstrap_replicates(a, n_boot=200, seed=9),
        bootstrap_replicates(b - a, n_boot=200, seed=9),
        atol=1e-12,
    )


def test_seed_resampling() -> None:
    # per-seed means 0, 0.25, 0.5 on every query; A is zero
    b = np.repeat(np.array([[0.0], [0.25], [0.5]]), 100, axis=1)
    a = np.zeros_like(b)
    fixed = paired_bootstrap(a, b, n_boot=500, resample_seeds=False)
    assert (fixed.estimate, fixed.low, fixed.high) == (25.0, 25.0, 25.0)
    varied = paired_bootstrap(a, b, n_boot=500, resample_seeds=True)
    assert varied.estimate == 25.0
    assert 0.0 <= varied.low < 25.0 < varied.high <= 50.0
    # a replicate is the mean of 3 drawn seed means: a multiple of 0.25 / 3
    reps = bootstrap_replicates(b, n_boot=500)
    np.testing.assert_allclose(reps * 12, np.round(reps * 12), atol=1e-9)


def test_seeded_and_batched_consistently() -> None:
    x = np.random.default_rng(12).random((2, 300))
    first = bootstrap_mean(x, n_boot=777, seed=3)
    assert first == bootstrap_mean(x, n_boot=777, seed=3)
    assert first != bootstrap_mean(x, n_boot=777, seed=4)
    assert bootstrap_mean(x, scale=1.0, n_boot=50).estimate == pytest.approx(x.mean())


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="non-finite"):
        bootstrap_mean(np.array([0.0, np.nan]))
    with pytest.raises(ValueError, match=r"\(N,\) or \(S, N\)"):
        bootstrap_mean(np.zeros((0,)))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean(np.zeros(3), confidence=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_replicates(np.zeros(3), n_boot=0)


def test_singleton_clusters_are_the_query_bootstrap() -> None:
    d = _bernoulli(0.3, (2, 300), seed=20)
    plain = bootstrap_replicates(d, n_boot=400, seed=3)
    single = bootstrap_replicates(d, n_boot=400, seed=3, clusters=np.arange(300))
    np.testing.assert_allclose(plain, single)


def test_clusters_of_copies_widen_the_interval_to_the_clusters_count() -> None:
    # C independent scenes, each counted m times: the information is C draws, not C * m
    c, m = 2000, 4
    scene = _bernoulli(0.5, (c,), seed=21)
    a = np.repeat(scene, m)
    labels = np.repeat([f"family{i}" for i in range(c)], m)
    p = a.mean()
    naive = bootstrap_mean(a, n_boot=3000, seed=22)
    clustered = bootstrap_mean(a, n_boot=3000, seed=22, clusters=labels)
    assert clustered.estimate == naive.estimate == pytest.approx(100 * p)
    half = (clustered.high - clustered.low) / 2
    assert half == pytest.approx(100 * Z_975 * np.sqrt(p * (1 - p) / c), rel=0.08)
    assert (naive.high - naive.low) / 2 == pytest.approx(half / np.sqrt(m), rel=0.1)
    # paired: a difference carried by whole families widens the same way
    b = np.repeat(np.abs(scene - _bernoulli(0.1, (c,), seed=23)), m)
    wide = paired_bootstrap(a, b, n_boot=2000, seed=24, clusters=labels)
    narrow = paired_bootstrap(a, b, n_boot=2000, seed=24)
    assert wide.estimate == narrow.estimate
    ratio = (wide.high - wide.low) / (narrow.high - narrow.low)
    assert ratio == pytest.approx(np.sqrt(m), rel=0.15)


def test_unequal_clusters_average_over_the_queries_drawn() -> None:
    # one cluster of 3 queries scoring 1, one of 1 query scoring 0: every replicate is a
    # mean over queries, so it is 0, 0.75 or 1 (never the 0.5 of a mean over clusters)
    scores = np.array([1.0, 1.0, 1.0, 0.0])
    reps = bootstrap_replicates(scores, n_boot=500, seed=25, clusters=np.array([7, 7, 7, 9]))
    assert set(np.round(reps, 12)) <= {0.0, 0.75, 1.0} and 0.75 in set(np.round(reps, 12))
    with pytest.raises(ValueError, match="label each of the 4 queries"):
        bootstrap_replicates(scores, clusters=np.array([1, 2]))


def test_standard_error_hand_case_and_independent_queries() -> None:
    x = np.array([1.0, 0.0, 1.0, 1.0])
    # independent: sample std sqrt(0.25) = 0.5 over sqrt(4) -> 0.25, in points
    assert standard_error(x) == pytest.approx(25.0)
    assert standard_error(x, clusters=np.array([0, 1, 2, 3])) == pytest.approx(25.0)
    # clusters {0, 1}, {2, 3}: residual sums -0.5 and +0.5 -> sqrt(2 * 0.5) / 4
    assert standard_error(x, clusters=np.array(["a", "a", "b", "b"])) == pytest.approx(25.0)
    # clusters {0, 1, 2}, {3}: residual sums -0.25 and +0.25 -> sqrt(2 * 0.125) / 4
    assert standard_error(x, np.array([0, 0, 0, 1])) == pytest.approx(np.sqrt(2 * 0.125) / 4 * 100)
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.3).astype(float)
    assert standard_error(y) == pytest.approx(100 * y.std(ddof=1) / np.sqrt(5000))


def test_standard_error_of_copies_is_that_of_the_distinct_values() -> None:
    rng = np.random.default_rng(1)
    distinct = (rng.random(400) < 0.4).astype(float)
    copies = np.repeat(distinct, 4)
    labels = np.repeat(np.arange(400), 4)
    assert standard_error(copies, labels) == pytest.approx(standard_error(distinct))
    # ignoring the copies understates it by about sqrt(4)
    assert standard_error(copies) == pytest.approx(standard_error(distinct) / 2, rel=0.01)


def test_standard_error_rejects_what_it_cannot_measure() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        standard_error(np.array([1.0, 0.0]), clusters=np.array([7, 7]))
    with pytest.raises(ValueError, match="one seed"):
        standard_error(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="clusters must label"):
        standard_error(np.zeros(5), clusters=np.zeros(4))
