"""Benchmark one negative-mining refresh (queries x pool) on CPU (or CUDA).

Default size mirrors the embedded/tiny default: ~3,000 training queries x ~3,500 pool
images x 16 tokens x 64 dims. ``--large`` adds a heavier CPU point (5,000 x 5,000 x 32 x
256). The full FashionIQ/CIRR scale (~20k x 20k x 32 x 256) is a GPU job.
Targets are planted near the top of each query's ranking (as for a trained model) so the
mid-zone logic does real work. Prints wall time, peak RSS growth and the mining summary.

``--fashioniq`` instead mines a FashionIQ-shaped problem (the train split's three
categories: 18,000 queries, 46,609 images; ``--quick``: a tenth) twice in one run: the
former way (every query scored against the whole split, then masked to its category) and
the pool-by-pool way of ``mine_negatives``; it prints wall time, scores computed, peak
memory and whether both results agree.

Usage::

    .venv/bin/python benchmarks/bench_mining.py
    .venv/bin/python benchmarks/bench_mining.py --strategy qure --large
    .venv/bin/python benchmarks/bench_mining.py --queries 20000 --pool 20000 \
        --tokens 32 --dim 256 --device cuda
    .venv/bin/python benchmarks/bench_mining.py --fashioniq --quick --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model import negatives
from dqe_cir_pipeline.model.mining_result import MiningResult
from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives

#: FashionIQ train split per category: (training queries, images).
FASHIONIQ_TRAIN = {"dress": (5985, 11452), "shirt": (5988, 19036), "toptee": (6027, 16121)}


def run_point(n: int, m: int, q: int, p: int, cfg: MiningConfig, device: str, seed: int) -> None:
    """Mine once at one size and print the figures."""
    gen = torch.Generator().manual_seed(seed)
    pool = F.normalize(torch.randn(m, q, p, generator=gen), dim=-1)
    target = torch.randint(0, m, (n,), generator=gen)
    # queries close to their target's mean token: the target ranks high, as after training
    centre = F.normalize(pool[target].mean(1), dim=-1)
    noise = F.normalize(torch.randn(n, p, generator=gen), dim=-1)
    queries = F.normalize(centre + 0.5 * noise, dim=-1)
    reference = torch.randint(0, m, (n,), generator=gen)
    reference = torch.where(reference == target, -1, reference)
    if device != "cpu":
        queries, pool = queries.to(device), pool.to(device)
    from _measure import measure  # a sibling script: loaded here so tests can import this file

    dt, mem, res = measure(
        lambda: mine_negatives(queries, pool, target, reference, cfg, device=device)
    )
    s = res.summary()
    print(
        f"[{cfg.strategy}] N={n} M={m} Q={q} P={p} chunk={cfg.chunk_size} device={device}: "
        f"{dt:.2f} s, peak RSS growth {mem / 2**20:.0f} MiB "
        f"(full N x M x Q fp32 tensor would be {n * m * q * 4 / 2**30:.2f} GiB)"
    )
    print(
        "  zone mean {:.1f} median {:.0f}, empty-zone rate {:.3f}, mean delta {:.3f}, "
        "fallbacks {}".format(
            s["zone_size/mean"],
            s["zone_size/median"],
            s["empty_zone_rate"],
            s["delta/mean"],
            {k.split("/")[1]: int(v) for k, v in s.items() if k.startswith("fallback/") and v},
        )
    )


def mine_masked(
    queries: torch.Tensor,
    pool: torch.Tensor,
    target_idx: torch.Tensor,
    reference_idx: torch.Tensor,
    cfg: MiningConfig,
    query_groups: np.ndarray | None = None,
    pool_groups: np.ndarray | None = None,
    device: str | None = None,
) -> MiningResult:
    """The former mining loop: every query scored against the whole pool, then masked.

    The reference that the pool-by-pool ``mine_negatives`` is timed (here) and tested
    (tests/model/test_mining_pools.py) against.
    """
    n, m = int(queries.shape[0]), int(pool.shape[0])
    groups = negatives._group_codes(query_groups, pool_groups, n, m)
    fn = negatives._STRATEGY_FN[cfg.strategy]
    parts: list[list[torch.Tensor]] = []
    for start, scores in negatives._iter_scores(queries, pool, cfg.chunk_size, device, None):
        c, dev = scores.shape[0], scores.device
        tgt = target_idx[start : start + c].to(dev)
        ref = reference_idx[start : start + c].to(dev)
        delta = scores - scores.gather(1, tgt.unsqueeze(1))
        if groups is None:
            valid = torch.ones((c, m), dtype=torch.bool, device=dev)
        else:
            qg = groups[0][start : start + c].to(dev)
            valid = qg.unsqueeze(1) == groups[1].to(dev).unsqueeze(0)
        valid[torch.arange(c, device=dev), tgt] = False
        has_ref = torch.nonzero(ref >= 0).squeeze(1)
        valid[has_ref, ref[has_ref]] = False
        qids = torch.arange(start, start + c, device=dev).unsqueeze(1)
        ch = fn(delta, valid, qids, torch.arange(m, device=dev), cfg)
        parts.append([t.cpu() for t in vars(ch).values()] + [valid.sum(dim=1).cpu()])
    cand, dlt, zone, lower, upper, fb, widen, pool_size = (
        torch.cat(column).numpy() for column in zip(*parts, strict=True)
    )
    return MiningResult(cand, dlt, zone, lower, upper, pool_size, fb, widen, cfg.strategy)


@contextlib.contextmanager
def counted_scores() -> Iterator[list[int]]:
    """Collect the size of every score block that mining computes inside the block."""
    counts: list[int] = []
    inner = negatives._iter_scores

    def counting(*args: object, **kwargs: object) -> Iterator[tuple[int, torch.Tensor]]:
        for start, scores in inner(*args, **kwargs):
            counts.append(scores.numel())
            yield start, scores

    negatives._iter_scores = counting
    try:
        yield counts
    finally:
        negatives._iter_scores = inner


def fashioniq_problem(
    scale: float, q: int, p: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Random unit vectors shaped like FashionIQ's train split, ``scale`` times its size.

    Categories are interleaved in the pool (no category is one contiguous range), targets
    and references lie in the query's category, queries sit near their target.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    names = list(FASHIONIQ_TRAIN)
    n_q = [round(nq * scale) for nq, _ in FASHIONIQ_TRAIN.values()]
    n_i = [round(ni * scale) for _, ni in FASHIONIQ_TRAIN.values()]
    pool_cat = rng.permutation(np.repeat(names, n_i))
    query_cat = np.repeat(names, n_q)
    target = np.empty(len(query_cat), np.int64)
    reference = np.empty(len(query_cat), np.int64)
    for cat in names:
        rows, members = query_cat == cat, np.flatnonzero(pool_cat == cat)
        target[rows] = rng.choice(members, rows.sum())
        reference[rows] = rng.choice(members, rows.sum())
    reference[reference == target] = -1
    pool = F.normalize(torch.randn(len(pool_cat), q, p, generator=gen), dim=-1)
    centre = F.normalize(pool[target].mean(1), dim=-1)
    noise = F.normalize(torch.randn(len(target), p, generator=gen), dim=-1)
    queries = F.normalize(centre + 0.5 * noise, dim=-1)
    return queries, pool, torch.from_numpy(target), torch.from_numpy(reference), query_cat, pool_cat


def _peak(fn: Callable[[], MiningResult], device: str) -> tuple[float, int, MiningResult]:
    """(seconds, peak memory growth in bytes, result): RSS on CPU, allocated CUDA memory."""
    if device == "cpu":
        from _measure import measure  # a sibling script: loaded here so tests import this file

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap from the previous way: not a peak
        return measure(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    res = fn()  # returns NumPy on the host: synchronised
    return time.perf_counter() - t0, torch.cuda.max_memory_allocated(device) - base, res


def run_fashioniq(
    scale: float, q: int, p: int, cfg: MiningConfig, device: str, seed: int, repeat: int
) -> None:
    """Mine one FashionIQ-shaped refresh the former way and pool by pool; print both.

    Wall time: the best of ``repeat`` runs; peak memory: the highest.
    """
    queries, pool, target, reference, qg, pg = fashioniq_problem(scale, q, p, seed)
    n, m = len(target), len(pg)
    if device != "cpu":
        queries, pool = queries.to(device), pool.to(device)
    print(
        f"FashionIQ-shaped [{cfg.strategy}] N={n} queries, M={m} images in 3 categories, "
        f"Q={q} P={p} chunk={cfg.chunk_size} device={device}"
    )
    ways = {
        "masked (former)": lambda: mine_masked(
            queries, pool, target, reference, cfg, qg, pg, device
        ),
        "per category": lambda: mine_negatives(
            queries, pool, target, reference, cfg, qg, pg, device=device
        ),
    }
    results, figures = {}, {name: (float("inf"), 0, 0) for name in ways}
    for _ in range(repeat):  # the ways alternate: load from other processes hits both alike
        for name, fn in ways.items():
            with counted_scores() as counts:
                dt, mem, results[name] = _peak(fn, device)
            best = figures[name]
            figures[name] = (min(best[0], dt), max(best[1], mem), sum(counts))
    for name, (dt, mem, scores) in figures.items():
        print(
            f"  {name:16s} {dt:8.2f} s   {scores / 1e6:9.1f} M scores   "
            f"peak memory growth {mem / 2**20:7.0f} MiB"
        )
    old, new = results.values()
    same_rows = (old.candidates == new.candidates).all(axis=1)
    exact = all(
        np.array_equal(getattr(old, f), getattr(new, f))
        for f in ("zone_size", "pool_size", "fallback", "widenings")
    )
    finite = np.isfinite(old.deltas)
    gap = float(np.abs(old.deltas[finite] - new.deltas[finite]).max()) if finite.any() else 0.0
    print(
        f"  same negatives for {int(same_rows.sum())}/{n} queries; zone sizes, pool sizes, "
        f"fallbacks {'identical' if exact else 'DIFFER'}; max |Delta difference| {gap:.1e}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--pool", type=int, default=3500)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--strategy", default="midzone", choices=["midzone", "qure", "random"])
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--large", action="store_true", help="also run 5000 x 5000 x 32 x 256")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fashioniq",
        action="store_true",
        help="FashionIQ-shaped refresh (18,000 x 46,609, 3 categories): former vs per category",
    )
    ap.add_argument("--quick", action="store_true", help="with --fashioniq: a tenth of the size")
    ap.add_argument("--repeat", type=int, default=1, help="with --fashioniq: best of R runs")
    args = ap.parse_args()
    cfg = MiningConfig(strategy=args.strategy, chunk_size=args.chunk_size)
    print(f"threads={torch.get_num_threads()}")
    if args.fashioniq:
        scale = 0.1 if args.quick else 1.0
        run_fashioniq(scale, args.tokens, args.dim, cfg, args.device, args.seed, args.repeat)
        return
    run_point(args.queries, args.pool, args.tokens, args.dim, cfg, args.device, args.seed)
    if args.large:
        run_point(5000, 5000, 32, 256, cfg, args.device, args.seed)


if __name__ == "__main__":
    main()
