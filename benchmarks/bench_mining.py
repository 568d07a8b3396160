"""Benchmark one negative-mining refresh (queries x pool) on CPU (or CUDA).

Default size mirrors the embedded/tiny default: ~3,000 training queries x ~3,500 pool
images x 16 tokens x 64 dims. ``--large`` adds a heavier CPU point (5,000 x 5,000 x 32 x
256). The full FashionIQ/CIRR scale (~20k x 20k x 32 x 256) is a GPU job.
Targets are planted near the top of each query's ranking (as for a trained model) so the
mid-zone logic does real work. Prints wall time, peak RSS growth and the mining summary.

Usage::

    .venv/bin/python benchmarks/bench_mining.py
    .venv/bin/python benchmarks/bench_mining.py --strategy qure --large
    .venv/bin/python benchmarks/bench_mining.py --queries 20000 --pool 20000 \
        --tokens 32 --dim 256 --device cuda
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _measure import measure

from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives


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
    args = ap.parse_args()
    cfg = MiningConfig(strategy=args.strategy, chunk_size=args.chunk_size)
    print(f"threads={torch.get_num_threads()}")
    run_point(args.queries, args.pool, args.tokens, args.dim, cfg, args.device, args.seed)
    if args.large:
        run_point(5000, 5000, 32, 256, cfg, args.device, args.seed)


if __name__ == "__main__":
    main()
