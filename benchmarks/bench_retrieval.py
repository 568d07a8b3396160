"""Benchmark chunked retrieval at FashionIQ-val scale on CPU (or CUDA).

Default: 6,000 queries x 6,000 gallery images x 32 tokens x 256 dims, random
L2-normalised embeddings. Reports wall time and peak resident-memory growth for
``target_ranks`` and ``topk(k=50)``, next to the size of the full N x M x Q score tensor
the chunked code never builds.

Usage::

    .venv/bin/python benchmarks/bench_retrieval.py                  # FashionIQ-val scale
    .venv/bin/python benchmarks/bench_retrieval.py --queries 1000 --gallery 2000
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _measure import measure

from dqe_cir_pipeline.model.retrieval import target_ranks, topk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=6000)
    ap.add_argument("--gallery", type=int, default=6000)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    queries = F.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=-1)
    gallery = F.normalize(torch.randn(args.gallery, args.tokens, args.dim, generator=gen), dim=-1)
    target = torch.randint(0, args.gallery, (args.queries,), generator=gen)
    if args.device != "cpu":
        queries, gallery, target = (
            queries.to(args.device),
            gallery.to(args.device),
            target.to(args.device),
        )

    n, m, q = args.queries, args.gallery, args.tokens
    full_bytes = n * m * q * 4
    flops = 2 * n * m * q * args.dim
    print(
        f"device={args.device} threads={torch.get_num_threads()} N={n} M={m} Q={q} P={args.dim} "
        f"chunk={args.chunk_size}"
    )
    print(
        f"gallery tensor: {gallery.numel() * 4 / 2**20:.0f} MiB; "
        f"full N x M x Q fp32 score tensor avoided: {full_bytes / 2**30:.2f} GiB; "
        f"N x M score matrix: {n * m * 4 / 2**20:.0f} MiB"
    )
    ranks: list[torch.Tensor] = []
    dt, mem, _ = measure(
        lambda: ranks.append(target_ranks(queries, gallery, target, chunk_size=args.chunk_size))
    )
    print(
        f"target_ranks: {dt:.2f} s ({flops / dt / 1e9:.1f} GFLOP/s), peak RSS growth "
        f"{mem / 2**20:.0f} MiB; "
        f"R@10 on random data {float((ranks[0] < 10).float().mean() * 100):.2f} % "
        f"(chance {100 * 10 / m:.2f} %)"
    )
    dt, mem, _ = measure(lambda: topk(queries, gallery, args.k, chunk_size=args.chunk_size))
    print(
        f"topk({args.k}): {dt:.2f} s ({flops / dt / 1e9:.1f} GFLOP/s), peak RSS growth "
        f"{mem / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
