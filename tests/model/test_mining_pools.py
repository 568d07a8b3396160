"""Mining pool by pool (FashionIQ categories) gives what scoring the whole pool and masking gave."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model import negatives
from dqe_cir_pipeline.model.mining_result import FALLBACK_NAMES, MiningResult
from dqe_cir_pipeline.model.negatives import (
    MiningConfig,
    delta_histogram,
    mine_negatives,
    sample_negatives,
)
from dqe_cir_pipeline.model.retrieval import _iter_scores

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_mining.py"
_FIELDS = ("candidates", "deltas", "zone_size", "lower", "upper", "pool_size", "fallback")
_CATEGORIES = np.array(["dress", "shirt", "toptee", "belt", "skirt"])


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_mining", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: The former loop (whole split scored, then masked), kept in the benchmark that times it.
_masked_reference = _load_bench().mine_masked


def _categorised(seed: int, n: int = 90, m: int = 160, dtype: torch.dtype = torch.float64):
    """Queries near their target; pool categories 0-2 and 4 ("skirt": no query), queries in
    0-3 ("belt": no pool image, targets elsewhere); every 9th target outside its category."""
    gen = torch.Generator().manual_seed(seed)
    pool = F.normalize(torch.randn(m, 3, 12, generator=gen, dtype=dtype), dim=-1)
    pool_cat = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (m,), generator=gen)]
    query_cat = torch.randint(0, 4, (n,), generator=gen)
    target = torch.empty(n, dtype=torch.long)
    for i in range(n):
        members = torch.nonzero(pool_cat == query_cat[i]).squeeze(1)
        if not len(members) or i % 9 == 0:
            members = torch.arange(m)
        target[i] = members[torch.randint(0, len(members), (1,), generator=gen)]
    noise = F.normalize(torch.randn(n, 12, generator=gen, dtype=dtype), dim=-1)
    queries = F.normalize(F.normalize(pool[target].mean(1), dim=-1) + 0.6 * noise, dim=-1)
    reference = torch.randint(-1, m, (n,), generator=gen)
    reference = torch.where(reference == target, -1, reference)
    return queries, pool, target, reference, _CATEGORIES[query_cat], _CATEGORIES[pool_cat]


def _assert_same(got: MiningResult, want: MiningResult, exact: bool = True) -> None:
    for name in _FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype or not exact, name
        if exact or a.dtype.kind != "f":
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:  # float32 GEMMs of 1-3 query rows round differently: Delta within ~1e-7
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6, err_msg=name)
    s, t = got.summary(), want.summary()
    assert s.keys() == t.keys()
    for key in s:
        assert s[key] == pytest.approx(t[key], abs=0 if exact else 1e-6, nan_ok=True), key
    draws = [sample_negatives(r, np.random.default_rng(3)) for r in (got, want)]
    np.testing.assert_array_equal(*draws)


@pytest.mark.parametrize("strategy", ["midzone", "qure", "random"])
def test_grouped_equals_masked_reference(strategy: str) -> None:
    queries, pool, target, reference, qg, pg = _categorised(seed=1)
    keeps = ("uniform",) if strategy == "random" else ("uniform", "hardest")
    fallbacks: set[str] = set()
    # epsilon 2.5 > any |Delta|: every mid-zone is empty, the random fallback for all
    for keep, chunk, eps in [(k, c, 0.01) for k in keeps for c in (1, 7, 512)] + [
        ("uniform", 7, 2.5)
    ]:
        cfg = MiningConfig(
            strategy=strategy,
            epsilon=eps,
            zone_keep=keep,
            chunk_size=chunk,
            max_zone=6,
            zone_quantile=0.04,
            qure_topk=12,
        )
        got = mine_negatives(queries, pool, target, reference, cfg, qg, pg)
        want = _masked_reference(queries, pool, target, reference, cfg, qg, pg)
        _assert_same(got, want)
        fallbacks |= {FALLBACK_NAMES[f] for f in got.fallback}
    assert {"empty_pool", "none"} <= fallbacks  # the comparison is not vacuous
    if strategy == "midzone":
        assert {"random", "widened"} <= fallbacks


def test_grouped_float32_same_negatives() -> None:
    queries, pool, target, reference, qg, pg = _categorised(seed=2, dtype=torch.float32)
    cfg = MiningConfig(chunk_size=16, max_zone=6, zone_quantile=0.04)
    got = mine_negatives(queries, pool, target, reference, cfg, qg, pg)
    want = _masked_reference(queries, pool, target, reference, cfg, qg, pg)
    _assert_same(got, want, exact=False)


def test_scores_only_each_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each query is scored against its own category (and its target), never the whole split."""
    queries, pool, target, reference, qg, pg = _categorised(seed=3)
    scored: list[int] = []

    def counting(q, gallery, *args):
        for start, scores in _iter_scores(q, gallery, *args):
            scored.append(scores.numel())
            yield start, scores

    monkeypatch.setattr(negatives, "_iter_scores", counting)
    mine_negatives(queries, pool, target, reference, MiningConfig(), qg, pg)
    expected = 0
    for cat in set(qg):
        columns = set(np.flatnonzero(pg == cat)) | set(target[qg == cat].tolist())
        expected += int((qg == cat).sum()) * len(columns)
    assert sum(scored) == expected < len(qg) * len(pg) * 0.4


def test_empty_category_and_no_queries() -> None:
    queries, pool, target, reference, qg, pg = _categorised(seed=4)
    res = mine_negatives(queries, pool, target, reference, MiningConfig(), qg, pg)
    belt = qg == "belt"  # a query category without a single pool image
    assert belt.any()
    assert (res.fallback[belt] == FALLBACK_NAMES.index("empty_pool")).all()
    assert (res.candidates[belt] == -1).all() and (res.pool_size[belt] == 0).all()
    assert (res.fallback[~belt] != FALLBACK_NAMES.index("empty_pool")).all()
    assert not set(res.candidates[~belt].ravel()) & set(np.flatnonzero(pg == "skirt"))
    only_belt = mine_negatives(
        queries[belt], pool, target[belt], reference[belt], MiningConfig(), qg[belt], pg
    )
    assert (only_belt.candidates == -1).all() and (only_belt.pool_size == 0).all()
    none = mine_negatives(queries[:0], pool, target[:0], reference[:0], None, qg[:0], pg)
    assert none.candidates.shape == (0, MiningConfig().max_zone) and len(none) == 0


def test_delta_histogram_per_category() -> None:
    queries, pool, target, reference, qg, pg = _categorised(seed=5)
    cfg = MiningConfig(zone_quantile=0.1, max_widenings=0)
    res = mine_negatives(queries, pool, target, reference, cfg, qg, pg)
    rows = [int(i) for i in np.flatnonzero(qg != "belt")[:6]][::-1]
    hist = delta_histogram(
        queries, pool, target, reference, rows, res, query_groups=qg, pool_groups=pg
    )
    assert hist["bounds_query"].tolist() == rows
    for q in rows:
        sel = hist["query"] == q
        assert sel.sum() == res.pool_size[q]
        assert hist["in_zone"][sel].sum() == res.zone_size[q]


def test_mining_run_emits_no_user_warning() -> None:
    """Read-only arrays (pandas hands those out) reach mining without a torch warning.

    In a fresh interpreter: torch reports a non-writable array once per process only.
    """
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np, torch
        warnings.simplefilter("error")
        from dqe_cir_pipeline.model.data import TrainData
        from dqe_cir_pipeline.model.mining import (
            mine_from_embeddings, neighbourhood_stats, zone_negatives)
        from dqe_cir_pipeline.model.negatives import MiningConfig

        def frozen(a):
            a = np.asarray(a, dtype=np.int64)
            a.flags.writeable = False
            return a

        n, m = 12, 30
        g = torch.Generator().manual_seed(0)
        target = frozen(np.arange(n) * 2)
        data = TrainData(
            query_ids=[str(i) for i in range(n)], reference_ids=["r"] * n,
            target_ids=[str(t) for t in target], captions_train=[["c"]] * n,
            caption_eval=["c"] * n, edits_color=np.zeros(n, bool),
            edits_shape=np.zeros(n, bool), pool_ids=[str(j) for j in range(m)],
            target_idx=target, reference_idx=frozen(np.arange(n) * 2 + 1),
            query_groups=frozen(np.arange(n) % 2), pool_groups=frozen(np.arange(m) % 2),
            neighbour_keys=frozen(np.sort((np.arange(n) * 2 + 1) * m + np.arange(n) * 2)),
        )
        q = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
        pool = torch.nn.functional.normalize(torch.randn(m, 2, 8, generator=g), dim=-1)
        cfg = MiningConfig(zone_quantile=0.3)
        res = mine_from_embeddings(q, pool, data, cfg, torch.device("cpu"))
        neighbourhood_stats(q, pool, data, res, cfg.epsilon)
        zone_negatives(res, data, np.random.default_rng(0))
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
