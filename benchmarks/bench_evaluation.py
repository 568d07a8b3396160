"""Benchmark one split's evaluation (``evaluate_embeddings``) from precomputed embeddings.

Default: the ambiguous tier's test split with the shipped tiny backbone's shapes: 10,000
queries, a 40,572-image gallery of 16 tokens x 64 dims, 1-4 valid targets per query,
CIRR-style subsets of 6 and the reference removed (the generated benchmark's protocol).
Random L2-normalised embeddings; prints wall time, peak resident-memory growth and a few
metrics (so two code versions can be checked for the same numbers).

Usage (compare two checkouts on the same machine, one after the other)::

    PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_evaluation.py
    PYTHONPATH=/path/to/other/src OMP_NUM_THREADS=1 .venv/bin/python \\
        benchmarks/bench_evaluation.py
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from _measure import measure

import dqe_cir_pipeline
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate_embeddings
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol

PROTOCOL = BenchmarkProtocol(subset_ks=CIRR_SUBSET_KS)  # whole gallery, reference removed


def _split(n: int, m: int, max_valid: int, subset: int, seed: int) -> EvalSet:
    """A split over gallery ``g0..g{m-1}``: per query a reference, 1..max_valid valid
    targets (the first is the annotated one) and a subset holding both."""
    rng = np.random.default_rng(seed)
    names = [f"g{i}" for i in range(m)]
    refs, targets, valid, members = [], [], [], []
    for _ in range(n):
        pick = rng.choice(m, size=1 + max_valid + subset, replace=False)
        chosen = [names[j] for j in pick[1 : 1 + int(rng.integers(1, max_valid + 1))]]
        refs.append(names[pick[0]])
        targets.append(chosen[0])
        valid.append(chosen)
        others = [names[j] for j in pick[1 + max_valid : max_valid + subset - 1]]
        members.append([names[pick[0]], chosen[0], *others])
    return EvalSet(
        dataset="synthetic",
        split="test",
        query_ids=[str(i) for i in range(n)],
        reference_ids=refs,
        target_ids=list(targets),
        texts=[""] * n,
        edit_types=["color"] * n,
        categories=["all"] * n,
        subset_members=members,
        gallery_ids=names,
        gallery_categories=["all"] * m,
        valid_targets=valid,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--gallery", type=int, default=40_572)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--max-valid", type=int, default=4)
    ap.add_argument("--chunk-size", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gen = torch.Generator().manual_seed(args.seed)
    q = F.normalize(torch.randn(args.queries, args.dim, generator=gen), dim=-1)
    gallery = F.normalize(torch.randn(args.gallery, args.tokens, args.dim, generator=gen), dim=-1)
    data = _split(args.queries, args.gallery, args.max_valid, 6, args.seed)
    print(
        f"code={dqe_cir_pipeline.__file__} threads={torch.get_num_threads()} "
        f"N={args.queries} M={args.gallery} Q={args.tokens} P={args.dim} "
        f"chunk={args.chunk_size}"
    )
    dt, mem, out = measure(
        lambda: evaluate_embeddings(
            q, None, gallery, data, chunk_size=args.chunk_size, protocol=PROTOCOL
        )
    )
    shown = ("recall@50", "recall_subset@1", "recall_any@50", "map@50")
    figures = ", ".join(f"{k} {out.metrics[k]:.3f}" for k in shown)
    print(f"evaluate_embeddings: {dt:.1f} s, peak RSS growth {mem / 2**20:.0f} MiB; {figures}")


if __name__ == "__main__":
    main()
