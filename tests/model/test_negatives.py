"""Tests for target-relative negative mining (mid-zone), the QuRe rule and random negatives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model.negatives import (
    FALLBACK_NAMES,
    MiningConfig,
    delta_histogram,
    mine_negatives,
    refresh_epochs,
    sample_negatives,
)


def _hand_made(deltas: list[float], n_queries: int = 1, reference_dup: bool = True):
    """Query e0 and single-token items whose scores are exactly ``1 + delta``.

    Layout: item 0 = target (score 1), item 1 = reference (score 1, a duplicate of the
    target when ``reference_dup``), items 2.. = the given deltas.
    """
    scores = [1.0, 1.0 if reference_dup else 0.0, *[1.0 + d for d in deltas]]
    pool = torch.zeros(len(scores), 1, 2, dtype=torch.float64)
    pool[:, 0, 0] = torch.tensor(scores, dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.0]], dtype=torch.float64).repeat(n_queries, 1)
    target = torch.zeros(n_queries, dtype=torch.long)
    reference = torch.ones(n_queries, dtype=torch.long)
    return queries, pool, target, reference


def _random(n: int, m: int, q: int, p: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(n, p, generator=gen, dtype=torch.float64), dim=-1)
    pool = F.normalize(torch.randn(m, q, p, generator=gen, dtype=torch.float64), dim=-1)
    target = torch.randint(0, m, (n,), generator=gen)
    reference = (target + 1 + torch.randint(0, m - 1, (n,), generator=gen)) % m
    reference[::4] = -1
    return queries, pool, target, reference


def test_zone_bounds_exact_and_epsilon_gap() -> None:
    deltas = [-j / 128 for j in range(100)]  # item 2 + j has delta -j/128
    queries, pool, target, reference = _hand_made(deltas)
    cfg = MiningConfig(epsilon=3 / 128, zone_quantile=0.1, max_zone=64, zone_keep="hardest")
    res = mine_negatives(queries, pool, target, reference, cfg)
    # pool = 100 (target and reference excluded) -> k = 10; j = 0, 1, 2 lie above -eps
    assert res.pool_size.tolist() == [100]
    assert res.zone_size.tolist() == [7]
    assert res.lower[0] == pytest.approx(-9 / 128) and res.upper[0] == pytest.approx(-3 / 128)
    stored = res.candidates[0][res.candidates[0] >= 0]
    assert stored.tolist() == [2 + j for j in range(3, 10)]  # -eps itself is inside
    np.testing.assert_allclose(res.deltas[0, :7], [-j / 128 for j in range(3, 10)])
    assert np.isnan(res.deltas[0, 7:]).all() and (res.candidates[0, 7:] == -1).all()
    assert FALLBACK_NAMES[res.fallback[0]] == "none" and res.widenings[0] == 0
    # near-duplicates (delta 0 .. -2/128), target and reference never stored
    assert not set(stored) & {0, 1, 2, 3, 4}


def test_max_zone_keep_modes() -> None:
    deltas = [-j / 128 for j in range(100)]
    queries, pool, target, reference = _hand_made(deltas, n_queries=50)
    zone = {2 + j for j in range(3, 10)}
    hard = mine_negatives(
        queries,
        pool,
        target,
        reference,
        MiningConfig(epsilon=3 / 128, zone_quantile=0.1, max_zone=3, zone_keep="hardest"),
    )
    assert (hard.candidates == np.array([5, 6, 7])).all()
    assert (hard.zone_size == 7).all()
    uni = mine_negatives(
        queries,
        pool,
        target,
        reference,
        MiningConfig(epsilon=3 / 128, zone_quantile=0.1, max_zone=3),
    )
    assert all(set(row) <= zone and len(set(row)) == 3 for row in uni.candidates.tolist())
    # a uniform subset: different queries keep different members, all members appear
    assert len({tuple(r) for r in uni.candidates.tolist()}) > 5
    assert set(uni.candidates.ravel()) == zone
    # rows stay sorted by delta, descending
    assert (np.diff(uni.deltas, axis=1) <= 0).all()


def test_empty_zone_widening_and_fallbacks() -> None:
    near = [-1 / 256] * 20  # 20 near-duplicates above -eps
    far = [-(10 + j) / 128 for j in range(80)]
    queries, pool, target, reference = _hand_made(near + far)
    eps = 3 / 128
    # k0 = 5; widen to 10, 20 (still empty: 20 near-duplicates), 40 -> zone ranks 20..39
    res = mine_negatives(
        queries, pool, target, reference, MiningConfig(epsilon=eps, zone_quantile=0.05)
    )
    assert res.widenings[0] == 3 and FALLBACK_NAMES[res.fallback[0]] == "widened"
    assert res.zone_size[0] == 20
    assert res.lower[0] == pytest.approx(-29 / 128)
    assert set(res.candidates[0][res.candidates[0] >= 0]) == {22 + j for j in range(20)}
    # only two widenings allowed -> hardest candidate below -eps
    res2 = mine_negatives(
        queries,
        pool,
        target,
        reference,
        MiningConfig(epsilon=eps, zone_quantile=0.05, max_widenings=2),
    )
    assert FALLBACK_NAMES[res2.fallback[0]] == "hardest_below"
    assert res2.candidates[0, 0] == 22 and (res2.candidates[0, 1:] == -1).all()
    assert res2.deltas[0, 0] == pytest.approx(-10 / 128) and res2.zone_size[0] == 0
    # everything is a near-duplicate -> random pool member (never target / reference)
    q3, p3, t3, r3 = _hand_made([-1 / 256] * 30, n_queries=40)
    res3 = mine_negatives(q3, p3, t3, r3, MiningConfig(epsilon=eps))
    assert all(FALLBACK_NAMES[f] == "random" for f in res3.fallback)
    assert ((res3.candidates[:, 0] >= 2) & (res3.candidates[:, 0] < 32)).all()
    assert len(set(res3.candidates[:, 0].tolist())) > 5
    # the pool holds only the target and the reference -> empty_pool, -1
    q4, p4, t4, r4 = _hand_made([])
    for strategy in ("midzone", "qure", "random"):
        res4 = mine_negatives(q4, p4, t4, r4, MiningConfig(strategy=strategy))
        assert FALLBACK_NAMES[res4.fallback[0]] == "empty_pool"
        assert (res4.candidates == -1).all()
        assert sample_negatives(res4, np.random.default_rng(0)).tolist() == [-1]
    summary = res3.summary()
    assert summary["fallback/random"] == 40.0 and summary["empty_zone_rate"] == 1.0


def test_target_and_reference_never_chosen() -> None:
    queries, pool, target, reference = _random(60, 40, 3, 8, seed=5)
    for strategy in ("midzone", "qure", "random"):
        res = mine_negatives(
            queries, pool, target, reference, MiningConfig(strategy=strategy, zone_quantile=0.3)
        )
        cand = res.candidates
        assert not (cand == target.numpy()[:, None]).any()
        has_ref = reference.numpy() >= 0  # -1 would match the -1 padding
        assert not (cand[has_ref] == reference.numpy()[has_ref, None]).any()
        expected_pool = 40 - 1 - (reference.numpy() >= 0)
        assert res.pool_size.tolist() == expected_pool.tolist()


def test_groups_respected() -> None:
    queries, pool, _, _ = _random(30, 50, 2, 8, seed=6)
    pool_groups = np.array(["dress", "shirt", "toptee"] * 16 + ["dress", "shirt"])
    query_groups = np.array(["dress", "shirt", "toptee"] * 10)
    target = torch.tensor([3 * (i % 10) + (i % 3) for i in range(30)])  # same group as query
    reference = torch.full((30,), -1)
    for strategy in ("midzone", "qure", "random"):
        res = mine_negatives(
            queries,
            pool,
            target,
            reference,
            MiningConfig(strategy=strategy, zone_quantile=0.5),
            query_groups,
            pool_groups,
        )
        for i in range(30):
            stored = res.candidates[i][res.candidates[i] >= 0]
            assert len(stored) > 0
            assert (pool_groups[stored] == query_groups[i]).all()
            assert res.pool_size[i] == (pool_groups == query_groups[i]).sum() - 1


def test_qure_rule_hand_made() -> None:
    below = [-0.05, -0.06, -0.30, -0.31, -0.32, -0.33, -0.80, -1.20, -1.21]
    # drops: .01 .24 .01 .01 .01 .47 .40 .01 -> steepest at 5; 4 and 6 are adjacent and
    # skipped although 6 is the 2nd steepest; next is 1 -> zone = positions 2..5
    above = [0.1, 0.0]  # above / equal to the target: never candidates
    queries, pool, target, reference = _hand_made(above + below)
    res = mine_negatives(queries, pool, target, reference, MiningConfig(strategy="qure"))
    stored = res.candidates[0][res.candidates[0] >= 0]
    assert stored.tolist() == [4 + 2, 4 + 3, 4 + 4, 4 + 5]
    assert res.zone_size[0] == 4
    assert res.upper[0] == pytest.approx(-0.30) and res.lower[0] == pytest.approx(-0.33)
    # truncated to the 5 highest below-target items: drops .01 .24 .01 .01 -> 1 and 3
    res5 = mine_negatives(
        queries, pool, target, reference, MiningConfig(strategy="qure", qure_topk=5)
    )
    assert res5.candidates[0][res5.candidates[0] >= 0].tolist() == [6, 7]
    # fewer than 4 below the target: all of them, flagged
    q2, p2, t2, r2 = _hand_made([0.2, -0.1, -0.2, -0.4])
    res2 = mine_negatives(q2, p2, t2, r2, MiningConfig(strategy="qure"))
    assert FALLBACK_NAMES[res2.fallback[0]] == "qure_short"
    assert res2.candidates[0][res2.candidates[0] >= 0].tolist() == [3, 4, 5]
    # n = 4 with the steepest drop in the middle: both other drops are adjacent to it
    q3, p3, t3, r3 = _hand_made([-0.1, -0.15, -0.6, -0.65])
    res3 = mine_negatives(q3, p3, t3, r3, MiningConfig(strategy="qure"))
    assert FALLBACK_NAMES[res3.fallback[0]] == "qure_short" and res3.zone_size[0] == 4
    # n = 5: drops .05 .45 .05 .30 -> steepest 1, next admissible 3 -> positions 2..3
    q5, p5, t5, r5 = _hand_made([-0.1, -0.15, -0.6, -0.65, -0.95])
    res5b = mine_negatives(q5, p5, t5, r5, MiningConfig(strategy="qure"))
    assert res5b.candidates[0][res5b.candidates[0] >= 0].tolist() == [4, 5]


def _naive_midzone(queries, pool, target, reference, eps, quantile):
    scores = torch.einsum("np,mqp->nmq", queries, pool).amax(-1)
    zones = []
    for i in range(scores.shape[0]):
        delta = scores[i] - scores[i, target[i]]
        valid = [c for c in range(pool.shape[0]) if c != target[i] and c != reference[i]]
        k = math.ceil(quantile * len(valid) - 1e-9)
        ranked = sorted(valid, key=lambda c: -float(delta[c]))[:k]
        zones.append({c for c in ranked if delta[c] <= -eps})
    return zones


def test_midzone_matches_naive_and_chunking() -> None:
    queries, pool, _, reference = _random(45, 120, 4, 6, seed=7)
    # realistic targets: among each query's 6 best items (random targets sit mid-pool)
    order = torch.einsum("np,mqp->nmq", queries, pool).amax(-1).argsort(dim=1, descending=True)
    target = order[torch.arange(45), torch.arange(45) % 6]
    reference = torch.where(reference == target, -1, reference)
    cfg = MiningConfig(epsilon=0.05, zone_quantile=0.2, max_zone=64, max_widenings=0)
    expected = _naive_midzone(queries, pool, target, reference, 0.05, 0.2)
    res = mine_negatives(queries, pool, target, reference, cfg)
    assert sum(bool(z) for z in expected) >= 30  # the comparison is not vacuous
    for i in range(45):
        stored = set(res.candidates[i][res.candidates[i] >= 0].tolist())
        if expected[i]:
            assert stored == expected[i] and res.zone_size[i] == len(expected[i])
        else:
            assert FALLBACK_NAMES[res.fallback[i]] == "hardest_below"
    for strategy in ("midzone", "qure", "random"):
        base = mine_negatives(
            queries,
            pool,
            target,
            reference,
            MiningConfig(strategy=strategy, max_zone=8, chunk_size=1000),
        )
        for cs in (1, 7):
            other = mine_negatives(
                queries,
                pool,
                target,
                reference,
                MiningConfig(strategy=strategy, max_zone=8, chunk_size=cs),
            )
            np.testing.assert_array_equal(other.candidates, base.candidates)
            np.testing.assert_allclose(other.deltas, base.deltas)
            for name in ("zone_size", "pool_size", "fallback", "widenings"):
                np.testing.assert_array_equal(getattr(other, name), getattr(base, name))
            np.testing.assert_allclose(other.lower, base.lower)


def test_sampling_stays_in_zone() -> None:
    queries, pool, target, reference = _random(80, 200, 3, 6, seed=8)
    res = mine_negatives(
        queries, pool, target, reference, MiningConfig(zone_quantile=0.1, max_zone=5)
    )
    rng = np.random.default_rng(0)
    rows = np.arange(80)
    seen = set()
    for _ in range(50):
        neg = sample_negatives(res, rng)
        assert (neg >= 0).all()
        assert (res.candidates == neg[:, None]).any(axis=1).all()
        pos = (res.candidates == neg[:, None]).argmax(axis=1)
        d = res.deltas[rows, pos]
        zoned = res.fallback <= 1  # none / widened: the zone bounds apply
        assert ((d[zoned] >= res.lower[zoned] - 1e-6) & (d[zoned] <= res.upper[zoned] + 1e-6)).all()
        seen.update(zip(rows.tolist(), neg.tolist(), strict=True))
    assert len(seen) == int(res.n_stored.sum())  # every stored member gets drawn


def test_refresh_schedule() -> None:
    assert refresh_epochs(30) == [5, 10, 15, 20, 25]
    assert refresh_epochs(50) == [8, 16, 24, 32, 40, 48]
    assert refresh_epochs(10, interval=3) == [3, 6, 9]
    assert refresh_epochs(4) == [1, 2, 3]
    with pytest.raises(ValueError):
        MiningConfig(strategy="hardest")


def test_delta_histogram_and_summary() -> None:
    queries, pool, target, reference = _random(20, 90, 2, 6, seed=9)
    cfg = MiningConfig(zone_quantile=0.2, max_zone=64, max_widenings=0)
    res = mine_negatives(queries, pool, target, reference, cfg)
    hist = delta_histogram(
        queries, pool, target, reference, [0, 3, 5], result=res, max_per_query=50
    )
    for q in (0, 3, 5):
        sel = hist["query"] == q
        assert sel.sum() == min(50, res.pool_size[q])
    full = delta_histogram(queries, pool, target, reference, [0, 3, 5], result=res)
    for q in (0, 3, 5):
        sel = full["query"] == q
        assert full["in_zone"][sel].sum() == res.zone_size[q]
    s = res.summary()
    assert {
        "zone_size/mean",
        "zone_size/median",
        "empty_zone_rate",
        "delta/mean",
        "fallback/none",
    } <= set(s)
    assert sum(s[f"fallback/{n}"] for n in FALLBACK_NAMES) == 20
    assert s["delta/mean"] <= -cfg.epsilon


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mining_matches_cpu() -> None:
    queries, pool, target, reference = _random(200, 300, 4, 16, seed=12)
    for strategy in ("midzone", "qure", "random"):
        cfg = MiningConfig(strategy=strategy, zone_quantile=0.2, chunk_size=64)
        cpu = mine_negatives(queries, pool, target, reference, cfg)
        gpu = mine_negatives(queries, pool, target, reference, cfg, device="cuda")
        np.testing.assert_array_equal(gpu.candidates, cpu.candidates)  # float64: exact
        np.testing.assert_array_equal(gpu.fallback, cpu.fallback)
        bf = mine_negatives(
            queries.float(),
            pool.float(),
            target,
            reference,
            cfg,
            device="cuda",
            amp_dtype=torch.bfloat16,
        )
        assert (bf.candidates[:, 0] >= -1).all() and bf.summary()["zone_size/mean"] > 0
