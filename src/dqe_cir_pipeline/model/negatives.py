"""Negative mining: target-relative mid-zone (TRNS), the QuRe rule, or random negatives.

For query i, Delta_i(c) = s(q_i, c) - s(q_i, t_i) over its pool (its group's when groups
are given), target and reference excluded. One chunked pass over queries x pool and a
bounded top-k per query: the pool is never sorted. Rules in detail: docs/method.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import config_block
from .mining_result import _FB, FALLBACK_NAMES, MiningResult
from .retrieval import _iter_scores

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

    ``idx``, ``vals``, ``zone``: (c, K) pool indices, Delta, membership. Returns (c, max_zone)
    indices (-1 pad) and float32 Delta (NaN pad), each row sorted by Delta descending.
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


def _random_member(valid: torch.Tensor, qids: torch.Tensor, seed: int) -> torch.Tensor:
    """``(c,)`` a hashed-uniform valid column per row (``-1`` if the row has none)."""
    cols = torch.arange(valid.shape[1], device=valid.device).expand_as(valid)
    keys = _hash_uniform(qids, cols, seed + 1).masked_fill(~valid, -1.0)
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


def _set_single(ch: _Chunk, rows: torch.Tensor, cols: torch.Tensor, delta: torch.Tensor) -> None:
    """Replace the stored candidates of ``rows`` by one fallback candidate each."""
    if rows.numel() == 0:
        return
    ch.cand[rows] = -1
    ch.delta[rows] = math.nan
    ch.cand[rows, 0] = cols
    ch.delta[rows, 0] = delta[rows, cols.clamp_min(0)].float().masked_fill(cols < 0, math.nan)
    ch.zone_size[rows] = 0


def _midzone_chunk(
    delta: torch.Tensor, valid: torch.Tensor, qids: torch.Tensor, cfg: MiningConfig
) -> _Chunk:
    """[design] Mid-zone of a chunk: of the k = ceil(quantile * pool) highest Delta, those <= -eps.

    Empty zone: k widens up to ``max_widenings`` times, then the hardest candidate below
    -epsilon, then a random one. ``delta``, ``valid``: (c, M).
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
    cand, cdelta = _keep(idx, vals, zone, qids, cfg.max_zone, cfg.zone_keep, cfg.seed)
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
        _set_single(ch, rows, best_col[hard], delta)
        ch.fallback[rows] = _FB["hardest_below"]
        rand_rows = erows[~hard & (pool[erows] > 0)]
        if rand_rows.numel():
            cols = _random_member(valid[rand_rows], qids[rand_rows], cfg.seed)
            _set_single(ch, rand_rows, cols, delta)
            ch.fallback[rand_rows] = _FB["random"]
        ch.fallback[empty & (pool == 0)] = _FB["empty_pool"]
    return ch


def _qure_chunk(
    delta: torch.Tensor, valid: torch.Tensor, qids: torch.Tensor, cfg: MiningConfig
) -> _Chunk:
    """[QuRe] rule as we read it, on a chunk: the Delta < 0 items between the two steepest drops.

    No second drop more than one position away: all of them. ``delta``, ``valid``: (c, M).
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
    cand, cdelta = _keep(idx, vals, zone, qids, cfg.max_zone, cfg.zone_keep, cfg.seed)
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
        cols = _random_member(valid[rand_rows], qids[rand_rows], cfg.seed)
        _set_single(ch, rand_rows, cols, delta)
        ch.fallback[rand_rows] = _FB["random"]
    ch.fallback[pool == 0] = _FB["empty_pool"]
    return ch


def _random_chunk(
    delta: torch.Tensor, valid: torch.Tensor, qids: torch.Tensor, cfg: MiningConfig
) -> _Chunk:
    """Hashed-uniform pool members for a chunk. ``delta``, ``valid``: (c, M)."""
    c, m = delta.shape
    dev = delta.device
    cols = torch.arange(m, device=dev).expand(c, m)
    cand, cdelta = _keep(cols, delta, valid, qids, cfg.max_zone, "uniform", cfg.seed)
    pool = valid.sum(dim=1)
    nan = torch.full((c,), math.nan, dtype=torch.float32, device=dev)
    fb = torch.where(pool > 0, _FB["none"], _FB["empty_pool"]).to(torch.int8)
    return _Chunk(
        cand, cdelta, pool, nan, nan.clone(), fb, torch.zeros(c, dtype=torch.int8, device=dev)
    )


_STRATEGY_FN = {"midzone": _midzone_chunk, "qure": _qure_chunk, "random": _random_chunk}


def _valid_mask(
    scores: torch.Tensor,
    start: int,
    target_idx: torch.Tensor,
    reference_idx: torch.Tensor,
    groups: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(delta (c, M), valid (c, M))`` for a chunk of scores starting at ``start``."""
    c, m = scores.shape
    dev = scores.device
    rows = torch.arange(c, device=dev)
    tgt = target_idx[start : start + c].to(dev)
    ref = reference_idx[start : start + c].to(dev)
    delta = scores - scores.gather(1, tgt.unsqueeze(1))
    if groups is not None:
        qg = groups[0][start : start + c].to(dev)
        valid = qg.unsqueeze(1) == groups[1].to(dev).unsqueeze(0)
    else:
        valid = torch.ones((c, m), dtype=torch.bool, device=dev)
    valid[rows, tgt] = False
    has_ref = torch.nonzero(ref >= 0).squeeze(1)
    valid[has_ref, ref[has_ref]] = False
    return delta, valid


def mine_negatives(
    queries: torch.Tensor,
    pool: torch.Tensor,
    target_idx: torch.Tensor,
    reference_idx: torch.Tensor,
    cfg: MiningConfig | None = None,
    query_groups: Sequence[object] | np.ndarray | torch.Tensor | None = None,
    pool_groups: Sequence[object] | np.ndarray | torch.Tensor | None = None,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> MiningResult:
    """Mine negatives for every query against the pool, in chunks of queries.

    Args:
        queries: (N, P) L2-normalised composed queries of the current model.
        pool: (M, Q, P) L2-normalised candidate token embeddings.
        target_idx: (N,) pool index of each target; ``reference_idx``: (N,), -1 if absent.
        query_groups: optional (N,) labels with ``pool_groups`` (M,): a query's pool is its group.
        amp_dtype: matmul dtype on CUDA (bf16 scores: Delta resolution ~4e-3 near 1).
    """
    cfg = cfg or MiningConfig()
    n, m = int(queries.shape[0]), int(pool.shape[0])
    target_idx = torch.as_tensor(target_idx, dtype=torch.long)
    reference_idx = torch.as_tensor(reference_idx, dtype=torch.long)
    if target_idx.shape != (n,) or reference_idx.shape != (n,):
        raise ValueError("target_idx and reference_idx must have shape (N,)")
    if n and (int(target_idx.min()) < 0 or int(target_idx.max()) >= m):
        raise ValueError("target_idx out of range")
    if n and (int(reference_idx.min()) < -1 or int(reference_idx.max()) >= m):
        raise ValueError("reference_idx out of range")
    groups = _group_codes(query_groups, pool_groups, n, m)
    if groups is not None:
        tg = groups[1][target_idx]
        if not torch.equal(tg, groups[0]):
            logger.warning(
                "%d targets lie outside their query's group", int((tg != groups[0]).sum())
            )
    fn = _STRATEGY_FN[cfg.strategy]
    parts: list[_Chunk] = []
    pools: list[torch.Tensor] = []
    for start, scores in _iter_scores(queries, pool, cfg.chunk_size, device, amp_dtype):
        delta, valid = _valid_mask(scores, start, target_idx, reference_idx, groups)
        qids = torch.arange(start, start + scores.shape[0], device=scores.device).unsqueeze(1)
        ch = fn(delta, valid, qids, cfg)
        parts.append(_Chunk(*(t.cpu() for t in vars(ch).values())))
        pools.append(valid.sum(dim=1).cpu())

    def cat(name: str, dtype: np.dtype, width: int | None = None) -> np.ndarray:
        if not parts:
            shape = (0, width) if width is not None else (0,)
            return np.zeros(shape, dtype=dtype)
        return torch.cat([getattr(p, name) for p in parts]).numpy().astype(dtype)

    result = MiningResult(
        candidates=cat("cand", np.int64, cfg.max_zone),
        deltas=cat("delta", np.float32, cfg.max_zone),
        zone_size=cat("zone_size", np.int64),
        lower=cat("lower", np.float32),
        upper=cat("upper", np.float32),
        pool_size=torch.cat(pools).numpy().astype(np.int64) if pools else np.zeros(0, np.int64),
        fallback=cat("fallback", np.int8),
        widenings=cat("widenings", np.int8),
        strategy=cfg.strategy,
    )
    logger.info("mined negatives (%s): %s", cfg.strategy, result.summary())
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
    target_idx = torch.as_tensor(target_idx, dtype=torch.long)
    reference_idx = torch.as_tensor(reference_idx, dtype=torch.long)
    groups = _group_codes(query_groups, pool_groups, n, m)
    sel = torch.from_numpy(qi)
    sub_groups = (groups[0][sel], groups[1]) if groups is not None else None
    rng = np.random.default_rng(seed)
    qs, ds, zs = [], [], []
    lows = np.full(len(qi), np.nan, np.float32)
    ups = np.full(len(qi), np.nan, np.float32)
    for _, scores in _iter_scores(queries[sel], pool, max(1, len(qi)), device, None):
        delta, valid = _valid_mask(scores, 0, target_idx[sel], reference_idx[sel], sub_groups)
        for r, q in enumerate(qi):
            d = delta[r][valid[r]].float().cpu().numpy()
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
