"""Negative mining: target-relative mid-zone (TRNS), the QuRe rule, or random negatives.

For query i, Delta_i(c) = s(q_i, c) - s(q_i, t_i) over its pool (its group's when groups
are given), target and reference excluded. Pool by pool, a chunked pass scores the pool's
queries against its images only, with a bounded top-k per query: the pool is never sorted.
Rules in detail: docs/method.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import config_block
from .fallback import fallback_warning
from .mining_result import _FB, FALLBACK_NAMES, MiningResult
from .retrieval import _iter_scores, _resolve_device

logger = logging.getLogger(__name__)

__all__ = [
    "FALLBACK_NAMES",
    "MiningConfig",
    "MiningResult",
    "delta_histogram",
    "mine_negatives",
    "refresh_epochs",
    "sample_negatives",
]


_STRATEGIES = ("midzone", "qure", "random")
_HASH_MASK = 0x7FFFFFFF


@config_block
class MiningConfig:
    """Negative-mining settings (``mining``).

    Attributes:
        epsilon: gap below the target score: the zone keeps Delta <= -epsilon.
        zone_quantile: the zone lies within this top fraction of the pool by Delta.
        max_zone: zone members stored per query (an oversized zone is subsampled).
        qure_topk: QuRe: length of the below-target list searched for drops.
        zone_keep: [design] which members of an oversized zone are kept: "uniform" or "hardest".
    """

    strategy: str = "midzone"
    epsilon: float = 0.01
    zone_quantile: float = 0.05
    max_zone: int = 64
    widen_factor: float = 2.0
    max_widenings: int = 3
    chunk_size: int = 512
    qure_topk: int = 100
    seed: int = 0
    zone_keep: str = "uniform"

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}; got {self.strategy!r}")
        if self.zone_keep not in ("uniform", "hardest"):
            raise ValueError(f"zone_keep must be 'uniform' or 'hardest'; got {self.zone_keep!r}")
        if not 0.0 < self.zone_quantile <= 1.0:
            raise ValueError("zone_quantile must be in (0, 1]")
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        if self.max_zone < 1 or self.chunk_size < 1 or self.qure_topk < 2:
            raise ValueError("max_zone, chunk_size must be >= 1 and qure_topk >= 2")
        if self.widen_factor < 1.0 or self.max_widenings < 0:
            raise ValueError("widen_factor must be >= 1 and max_widenings >= 0")


def _mix(x: torch.Tensor) -> torch.Tensor:
    """xorshift-multiply hash on 31 bits: products stay below 2**58, no int64 overflow."""
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _HASH_MASK
    x = x ^ (x >> 16)
    x = (x * 0x45D9F3B) & _HASH_MASK
    return x ^ (x >> 16)


def _hash_uniform(qids: torch.Tensor, items: torch.Tensor, seed: int) -> torch.Tensor:
    """(c, K) float64 keys in [0, 1) for (c, 1) query ids x (c, K) pool indices.

    A hash rather than an RNG, so the draws do not depend on chunking or device.
    """
    s = _mix(torch.tensor(seed & _HASH_MASK, dtype=torch.long, device=qids.device))
    row = _mix((_mix((qids & _HASH_MASK) ^ s) + 0x2545F49) & _HASH_MASK)  # (c, 1), cheap
    x = _mix((row + (items & _HASH_MASK)) & _HASH_MASK)
    return x.double() / float(_HASH_MASK + 1)


def _group_codes(
    query_groups: Sequence[object] | np.ndarray | torch.Tensor | None,
    pool_groups: Sequence[object] | np.ndarray | torch.Tensor | None,
    n: int,
    m: int,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Map arbitrary group labels (ints or strings) to shared int64 codes."""
    if query_groups is None and pool_groups is None:
        return None
    if query_groups is None or pool_groups is None:
        raise ValueError("give both query_groups and pool_groups, or neither")
    qg = np.asarray(query_groups.cpu() if isinstance(query_groups, torch.Tensor) else query_groups)
    pg = np.asarray(pool_groups.cpu() if isinstance(pool_groups, torch.Tensor) else pool_groups)
    if qg.shape != (n,) or pg.shape != (m,):
        raise ValueError(f"groups must be ({n},) and ({m},); got {qg.shape} and {pg.shape}")
    _, codes = np.unique(np.concatenate([qg.astype(str), pg.astype(str)]), return_inverse=True)
    codes = torch.from_numpy(codes.astype(np.int64))
    return codes[:n], codes[n:]


def _keep(
    idx: torch.Tensor,
    vals: torch.Tensor,
    zone: torch.Tensor,
    qids: torch.Tensor,
    max_zone: int,
    mode: str,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """At most ``max_zone`` zone members per row: a hashed-uniform subset or the hardest.

    ``idx``, ``vals``, ``zone``: (c, K) global pool indices, Delta, membership. Returns
    (c, max_zone) indices (-1 pad) and float32 Delta (NaN pad), rows by Delta descending.
    """
    c, k = idx.shape
    out_i = torch.full((c, max_zone), -1, dtype=torch.long, device=idx.device)
    out_d = torch.full((c, max_zone), math.nan, dtype=torch.float32, device=idx.device)
    if k == 0:
        return out_i, out_d
    keys = _hash_uniform(qids, idx, seed) if mode == "uniform" else vals.double()
    keys = keys.masked_fill(~zone, -math.inf)
    kz = min(max_zone, k)
    kv, pos = torch.topk(keys, kz, dim=1)
    sel_i = idx.gather(1, pos)
    sel_d = vals.gather(1, pos).float()
    ok = torch.isfinite(kv)
    order = torch.argsort(sel_d.masked_fill(~ok, -math.inf), dim=1, descending=True, stable=True)
    sel_i, sel_d, ok = sel_i.gather(1, order), sel_d.gather(1, order), ok.gather(1, order)
    out_i[:, :kz] = sel_i.masked_fill(~ok, -1)
    out_d[:, :kz] = sel_d.masked_fill(~ok, math.nan)
    return out_i, out_d


def _random_member(
    valid: torch.Tensor, qids: torch.Tensor, items: torch.Tensor, seed: int
) -> torch.Tensor:
    """``(c,)`` a hashed-uniform valid column per row (``-1`` if the row has none).

    Hashed on the columns' global pool indices ``items`` (K,): the draw does not depend on
    which other images were scored.
    """
    keys = _hash_uniform(qids, items.expand_as(valid), seed + 1).masked_fill(~valid, -1.0)
    best = keys.argmax(dim=1)
    return torch.where(valid.any(dim=1), best, torch.full_like(best, -1))


@dataclass
class _Chunk:
    """One chunk's output: ``cand``, ``delta`` (c, max_zone), every other field (c,)."""

    cand: torch.Tensor
    delta: torch.Tensor
    zone_size: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    fallback: torch.Tensor
    widenings: torch.Tensor


def _set_single(
    ch: _Chunk, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor, items: torch.Tensor
) -> None:
    """Replace the stored candidates of ``rows`` by one fallback each: column ``cols``."""
    if rows.numel() == 0:
        return
    ch.cand[rows] = -1
    ch.delta[rows] = math.nan
    ch.cand[rows, 0] = torch.where(cols >= 0, items[cols.clamp_min(0)], cols)
    ch.delta[rows, 0] = delta[rows, cols.clamp_min(0)].float().masked_fill(cols < 0, math.nan)
    ch.zone_size[rows] = 0


def _midzone_chunk(
    delta: torch.Tensor,
    valid: torch.Tensor,
    qids: torch.Tensor,
    items: torch.Tensor,
    cfg: MiningConfig,
) -> _Chunk:
    """[design] Mid-zone of a chunk: of the k = ceil(quantile * pool) highest Delta, those <= -eps.

    Empty zone: k widens up to ``max_widenings`` times, then the hardest candidate below
    -epsilon, then a random one. ``delta``, ``valid``: (c, K) over the columns ``items``.
    """
    c, m = delta.shape
    dev = delta.device
    eps = cfg.epsilon
    pool = valid.sum(dim=1)
    masked = delta.masked_fill(~valid, -math.inf)  # invalid items never rank, never count
    n_above = (masked > -eps).sum(dim=1)
    # ceil with a tolerance: 0.02 * 3500 = 70.00000000000001 must give 70, not 71
    k0 = torch.ceil(pool.double() * cfg.zone_quantile - 1e-9).long().clamp(min=1)
    k0 = torch.minimum(k0, pool)
    kw = k0.clone()
    widen = torch.zeros(c, dtype=torch.long, device=dev)
    for w in range(1, cfg.max_widenings + 1):
        need = (n_above >= kw) & (kw < pool)
        if not bool(need.any()):
            break
        kn = torch.ceil(k0.double() * cfg.widen_factor**w - 1e-9).long()
        kw = torch.where(need, torch.minimum(kn, pool), kw)
        widen = torch.where(need, torch.full_like(widen, w), widen)
    zone_size = (kw - n_above).clamp(min=0)
    kmax = int(kw.max()) if c else 0
    vals, idx = (
        torch.topk(masked, kmax, dim=1) if kmax > 0 else (masked[:, :0], delta[:, :0].long())
    )
    pos = torch.arange(kmax, device=dev).unsqueeze(0)
    zone = (pos >= n_above.unsqueeze(1)) & (pos < kw.unsqueeze(1)) & torch.isfinite(vals)
    cand, cdelta = _keep(items[idx], vals, zone, qids, cfg.max_zone, cfg.zone_keep, cfg.seed)
    has_zone = zone_size > 0
    lower = torch.full((c,), math.nan, dtype=torch.float32, device=dev)
    if kmax > 0:
        lvals = vals.gather(1, (kw - 1).clamp(min=0).unsqueeze(1)).squeeze(1).float()
        lower = torch.where(has_zone, lvals, lower)
    upper = torch.where(has_zone, torch.full_like(lower, -eps), torch.full_like(lower, math.nan))
    fb = torch.where(widen > 0, _FB["widened"], _FB["none"]).to(torch.int8)
    ch = _Chunk(cand, cdelta, zone_size, lower, upper, fb, widen.to(torch.int8))
    # fallbacks for rows still without a zone
    empty = ~has_zone
    if bool(empty.any()):
        erows = torch.nonzero(empty).squeeze(1)
        sub = masked[erows]  # (e, M): only the rows that need a fallback
        best_val, best_col = sub.masked_fill(sub > -eps, -math.inf).max(dim=1)
        hard = torch.isfinite(best_val)
        rows = erows[hard]
        _set_single(ch, rows, best_col[hard], delta, items)
        ch.fallback[rows] = _FB["hardest_below"]
        rand_rows = erows[~hard & (pool[erows] > 0)]
        if rand_rows.numel():
            cols = _random_member(valid[rand_rows], qids[rand_rows], items, cfg.seed)
            _set_single(ch, rand_rows, cols, delta, items)
            ch.fallback[rand_rows] = _FB["random"]
        ch.fallback[empty & (pool == 0)] = _FB["empty_pool"]
    return ch


def _qure_chunk(
    delta: torch.Tensor,
    valid: torch.Tensor,
    qids: torch.Tensor,
    items: torch.Tensor,
    cfg: MiningConfig,
) -> _Chunk:
    """[QuRe] rule as we read it, on a chunk: the Delta < 0 items between the two steepest drops.

    No second drop more than one position away: all of them. ``delta``, ``valid``: (c, K).
    """
    c, m = delta.shape
    dev = delta.device
    below = valid & (delta < 0)
    k = min(cfg.qure_topk, m)
    vals, idx = torch.topk(delta.masked_fill(~below, -math.inf), k, dim=1)
    if k < 2:  # degenerate pool: pad so that there is one (masked) drop column
        pad = 2 - k
        vals = torch.cat([vals, vals.new_full((c, pad), -math.inf)], dim=1)
        idx = torch.cat([idx, idx.new_zeros((c, pad))], dim=1)
        k = 2
    n = torch.clamp(below.sum(dim=1), max=k)
    j = torch.arange(k - 1, device=dev).unsqueeze(0)
    drops = (vals[:, :-1] - vals[:, 1:]).masked_fill(j + 1 >= n.unsqueeze(1), -math.inf)
    first = drops.argmax(dim=1, keepdim=True)  # first occurrence on ties
    drops2 = drops.masked_fill((j - first).abs() <= 1, -math.inf)
    second = drops2.argmax(dim=1, keepdim=True)
    ok = torch.isfinite(drops2.gather(1, second)).squeeze(1)
    lo = torch.minimum(first, second).squeeze(1)
    hi = torch.maximum(first, second).squeeze(1)
    pos = torch.arange(k, device=dev).unsqueeze(0)
    zone_drop = (pos > lo.unsqueeze(1)) & (pos <= hi.unsqueeze(1)) & ok.unsqueeze(1)
    short = ~ok & (n > 0)
    zone_short = (pos < n.unsqueeze(1)) & short.unsqueeze(1)
    zone = zone_drop | zone_short
    cand, cdelta = _keep(items[idx], vals, zone, qids, cfg.max_zone, cfg.zone_keep, cfg.seed)
    nan = torch.full((c,), math.nan, dtype=torch.float32, device=dev)
    up_pos = torch.where(ok, lo + 1, torch.zeros_like(lo))
    low_pos = torch.where(ok, hi, (n - 1).clamp(min=0))
    has = ok | short
    upper = torch.where(has, vals.gather(1, up_pos.unsqueeze(1)).squeeze(1).float(), nan)
    lower = torch.where(has, vals.gather(1, low_pos.unsqueeze(1)).squeeze(1).float(), nan)
    zone_size = zone.sum(dim=1)
    fb = torch.full((c,), _FB["none"], dtype=torch.int8, device=dev)
    fb[short] = _FB["qure_short"]
    ch = _Chunk(
        cand, cdelta, zone_size, lower, upper, fb, torch.zeros(c, dtype=torch.int8, device=dev)
    )
    pool = valid.sum(dim=1)
    rand_rows = torch.nonzero((n == 0) & (pool > 0)).squeeze(1)
    if rand_rows.numel():
        cols = _random_member(valid[rand_rows], qids[rand_rows], items, cfg.seed)
        _set_single(ch, rand_rows, cols, delta, items)
        ch.fallback[rand_rows] = _FB["random"]
    ch.fallback[pool == 0] = _FB["empty_pool"]
    return ch


def _random_chunk(
    delta: torch.Tensor,
    valid: torch.Tensor,
    qids: torch.Tensor,
    items: torch.Tensor,
    cfg: MiningConfig,
) -> _Chunk:
    """Hashed-uniform pool members for a chunk. ``delta``, ``valid``: (c, K)."""
    c, m = delta.shape
    dev = delta.device
    cand, cdelta = _keep(items.expand(c, m), delta, valid, qids, cfg.max_zone, "uniform", cfg.seed)
    pool = valid.sum(dim=1)
    nan = torch.full((c,), math.nan, dtype=torch.float32, device=dev)
    fb = torch.where(pool > 0, _FB["none"], _FB["empty_pool"]).to(torch.int8)
    return _Chunk(
        cand, cdelta, pool, nan, nan.clone(), fb, torch.zeros(c, dtype=torch.int8, device=dev)
    )


_STRATEGY_FN = {"midzone": _midzone_chunk, "qure": _qure_chunk, "random": _random_chunk}


@dataclass
class _Pool:
    """One negative pool: its queries and the pool images scored for them.

    ``rows`` (n,) global query indices; ``items`` (K,) ascending global pool indices of the
    scored columns; ``member`` (K,) whether a column belongs to the pool (False: a target
    outside its query's group, scored only as that query's Delta reference).
    """

    rows: torch.Tensor
    items: torch.Tensor
    member: torch.Tensor


def _pools(
    target_idx: torch.Tensor, groups: tuple[torch.Tensor, torch.Tensor] | None, m: int
) -> list[_Pool]:
    """One pool per query group (none for a group without queries); one in all without groups."""
    n = int(target_idx.shape[0])
    if groups is None:
        everything = _Pool(torch.arange(n), torch.arange(m), torch.ones(m, dtype=torch.bool))
        return [everything] if n else []
    query_g, pool_g = groups
    out: list[_Pool] = []
    for g in torch.unique(query_g).tolist():
        rows = torch.nonzero(query_g == g).squeeze(1)
        member = pool_g == g
        scored = member.clone()
        scored[target_idx[rows]] = True  # Delta needs each query's target score
        items = torch.nonzero(scored).squeeze(1)
        out.append(_Pool(rows, items, member[items]))
    return out


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for ascending ``idx``: a view, not a copy, when ``idx`` is one range."""
    if len(idx) and int(idx[-1]) - int(idx[0]) + 1 == len(idx):
        return x[int(idx[0]) : int(idx[-1]) + 1]
    return x[idx.to(x.device)]


def _iter_pool_chunks(
    queries: torch.Tensor,
    pool: torch.Tensor,
    target_idx: torch.Tensor,
    reference_idx: torch.Tensor,
    groups: tuple[torch.Tensor, torch.Tensor] | None,
    chunk_size: int,
    device: str | torch.device | None,
    amp_dtype: torch.dtype | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(rows (c,), items (K,), delta (c, K), valid (c, K))``, pool after pool.

    A query is scored against its own pool only (and its target), ``chunk_size`` queries
    at a time; ``valid`` drops non-members, the query's target and its reference.
    """
    m = int(pool.shape[0])
    dev = _resolve_device(queries, device)
    for p in _pools(target_idx, groups, m):
        local = torch.full((m,), -1, dtype=torch.long)  # global pool index -> column
        local[p.items] = torch.arange(len(p.items))
        tgt = local[target_idx[p.rows]].to(dev)
        ref = reference_idx[p.rows]
        ref = torch.where(ref >= 0, local[ref.clamp_min(0)], ref).to(dev)  # -1: not scored
        member, items = p.member.to(dev), p.items.to(dev)
        sub_q, sub_pool = _take(queries, p.rows), _take(pool, p.items)
        for start, scores in _iter_scores(sub_q, sub_pool, chunk_size, dev, amp_dtype):
            c = scores.shape[0]
            t, r = tgt[start : start + c], ref[start : start + c]
            delta = scores - scores.gather(1, t.unsqueeze(1))
            valid = member.expand(c, -1).clone()
            valid[torch.arange(c, device=dev), t] = False
            has_ref = torch.nonzero(r >= 0).squeeze(1)
            valid[has_ref, r[has_ref]] = False
            yield p.rows[start : start + c], items, delta, valid


def _as_index(x: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
    """An int64 CPU tensor; a read-only NumPy array (e.g. from pandas) is copied, not shared."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        x = np.array(x, dtype=np.int64)
    return torch.as_tensor(x, dtype=torch.long).cpu()  # indexes the CPU group codes


def _check_indices(target_idx: torch.Tensor, reference_idx: torch.Tensor, n: int, m: int) -> None:
    if target_idx.shape != (n,) or reference_idx.shape != (n,):
        raise ValueError("target_idx and reference_idx must have shape (N,)")
    if n and (int(target_idx.min()) < 0 or int(target_idx.max()) >= m):
        raise ValueError("target_idx out of range")
    if n and (int(reference_idx.min()) < -1 or int(reference_idx.max()) >= m):
        raise ValueError("reference_idx out of range")


def mine_negatives(
    queries: torch.Tensor,
    pool: torch.Tensor,
    target_idx: torch.Tensor | np.ndarray,
    reference_idx: torch.Tensor | np.ndarray,
    cfg: MiningConfig | None = None,
    query_groups: Sequence[object] | np.ndarray | torch.Tensor | None = None,
    pool_groups: Sequence[object] | np.ndarray | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> MiningResult:
    """Mine negatives for every query against its pool, pool by pool, in chunks of queries.

    Args:
        queries: (N, P) L2-normalised composed queries of the current model.
        pool: (M, Q, P) L2-normalised candidate token embeddings.
        target_idx: (N,) pool index of each target; ``reference_idx``: (N,), -1 if absent.
        query_groups: optional (N,) labels with ``pool_groups`` (M,): a query's pool is its
            group, and only that group's images are scored for it.
        amp_dtype: matmul dtype on CUDA (bf16 scores: Delta resolution ~4e-3 near 1).
    """
    cfg = cfg or MiningConfig()
    n, m = int(queries.shape[0]), int(pool.shape[0])
    target_idx, reference_idx = _as_index(target_idx), _as_index(reference_idx)
    _check_indices(target_idx, reference_idx, n, m)
    groups = _group_codes(query_groups, pool_groups, n, m)
    if groups is not None:
        tg = groups[1][target_idx]
        if not torch.equal(tg, groups[0]):
            logger.warning(
                "%d targets lie outside their query's group", int((tg != groups[0]).sum())
            )
    fn = _STRATEGY_FN[cfg.strategy]
    nan = torch.full((n,), math.nan, dtype=torch.float32)
    out = _Chunk(
        cand=torch.full((n, cfg.max_zone), -1, dtype=torch.long),
        delta=torch.full((n, cfg.max_zone), math.nan, dtype=torch.float32),
        zone_size=torch.zeros(n, dtype=torch.long),
        lower=nan,
        upper=nan.clone(),
        fallback=torch.zeros(n, dtype=torch.int8),
        widenings=torch.zeros(n, dtype=torch.int8),
    )
    pool_size = torch.zeros(n, dtype=torch.long)
    chunks = _iter_pool_chunks(
        queries, pool, target_idx, reference_idx, groups, cfg.chunk_size, device, amp_dtype
    )
    for rows, items, delta, valid in chunks:
        ch = fn(delta, valid, rows.to(delta.device).unsqueeze(1), items, cfg)
        for name, value in vars(ch).items():
            getattr(out, name)[rows] = value.cpu()
        pool_size[rows] = valid.sum(dim=1).cpu()
    result = MiningResult(
        candidates=out.cand.numpy(),
        deltas=out.delta.numpy(),
        zone_size=out.zone_size.numpy(),
        lower=out.lower.numpy(),
        upper=out.upper.numpy(),
        pool_size=pool_size.numpy(),
        fallback=out.fallback.numpy(),
        widenings=out.widenings.numpy(),
        strategy=cfg.strategy,
    )
    summary = result.summary()
    logger.info("mined negatives (%s): %s", cfg.strategy, summary)
    warning = fallback_warning(summary, cfg.strategy)
    if warning is not None:
        logger.warning(warning)
    return result


def sample_negatives(result: MiningResult, generator: np.random.Generator) -> np.ndarray:
    """(N,) one pool index per query, uniform over its stored zone; -1 where none is stored."""
    counts = result.n_stored
    pick = np.floor(generator.random(len(result)) * np.maximum(counts, 1)).astype(np.int64)
    pick = np.minimum(pick, np.maximum(counts - 1, 0))
    out = result.candidates[np.arange(len(result)), pick]
    return np.where(counts > 0, out, -1).astype(np.int64)


def delta_histogram(
    queries: torch.Tensor,
    pool: torch.Tensor,
    target_idx: torch.Tensor,
    reference_idx: torch.Tensor,
    query_indices: Sequence[int] | None = None,
    result: MiningResult | None = None,
    max_per_query: int = 5000,
    query_groups: Sequence[object] | np.ndarray | torch.Tensor | None = None,
    pool_groups: Sequence[object] | np.ndarray | torch.Tensor | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Delta samples of a few queries (default: the first 8) for the distribution plot.

    Long format (``query``, ``delta``, ``in_zone``) plus per sampled query ``bounds_query``,
    ``lower``, ``upper``: ``result``'s zone bounds (NaN and no zone without ``result``).
    """
    n, m = int(queries.shape[0]), int(pool.shape[0])
    qi = np.asarray(
        list(query_indices) if query_indices is not None else range(min(8, n)), np.int64
    )
    target_idx, reference_idx = _as_index(target_idx), _as_index(reference_idx)
    groups = _group_codes(query_groups, pool_groups, n, m)
    sel = torch.from_numpy(qi)
    sub_groups = (groups[0][sel], groups[1]) if groups is not None else None
    pooled: dict[int, np.ndarray] = {}  # row in qi -> Delta over its pool, pool order
    for rows, _, delta, valid in _iter_pool_chunks(
        queries[sel],
        pool,
        target_idx[sel],
        reference_idx[sel],
        sub_groups,
        max(1, len(qi)),
        device,
        None,
    ):
        for j, r in enumerate(rows.tolist()):
            pooled[r] = delta[j][valid[j]].float().cpu().numpy()
    rng = np.random.default_rng(seed)
    qs, ds, zs = [], [], []
    lows = np.full(len(qi), np.nan, np.float32)
    ups = np.full(len(qi), np.nan, np.float32)
    for r, q in enumerate(qi):  # draws in query order, whatever order the pools came in
        d = pooled[r]
        if d.size > max_per_query:
            d = rng.choice(d, size=max_per_query, replace=False)
        lo, up = (result.lower[q], result.upper[q]) if result is not None else (np.nan, np.nan)
        lows[r], ups[r] = lo, up
        qs.append(np.full(d.size, q, np.int64))
        ds.append(d.astype(np.float32))
        zs.append((d >= lo) & (d <= up))
    empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float32)
    return {
        "query": np.concatenate(qs) if qs else empty_i,
        "delta": np.concatenate(ds) if ds else empty_f,
        "in_zone": np.concatenate(zs) if zs else np.zeros(0, bool),
        "bounds_query": qi,
        "lower": lows,
        "upper": ups,
    }


def refresh_epochs(total_epochs: int, interval: int | None = None) -> list[int]:
    """Epochs (0-based, at their start) at which negatives are re-mined; never epoch 0.

    ``interval=None``: QuRe's ``max(1, E // 6)``, e.g. E=30 -> 5, 10, 15, 20, 25.
    """
    if total_epochs < 1:
        return []
    step = interval if interval is not None else max(1, total_epochs // 6)
    if step < 1:
        raise ValueError("interval must be >= 1")
    return list(range(step, total_epochs, step))
