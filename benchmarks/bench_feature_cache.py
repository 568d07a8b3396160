"""Benchmark the ViT token-feature cache: write throughput and random batch reads.

The read rate is what training sees when it samples random batches of cached
reference / target features. Two cache states are measured:

* ``warm``: shards in the OS page cache (typical once a gallery fits in RAM);
* ``cold``: the shards' pages dropped first with ``posix_fadvise(DONTNEED)`` (no root
  needed; a hypervisor's cache may still help, so treat it as a lower bound on
  real-disk slowness, not a guarantee).

Usage::

    .venv/bin/python benchmarks/bench_feature_cache.py                # both sizes
    .venv/bin/python benchmarks/bench_feature_cache.py --configs 4000x65x128
    .venv/bin/python benchmarks/bench_feature_cache.py --prefetch     # read-ahead hints
    .venv/bin/python benchmarks/bench_feature_cache.py --root /fast/disk --keep
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _measure import drop_page_cache

from dqe_cir_pipeline.datasets.feature_cache import FeatureCacheDataset, FeatureExtractionJob

logger = logging.getLogger("bench_feature_cache")


def _parse_config(text: str) -> tuple[int, int, int]:
    n, t, d = (int(part) for part in text.lower().split("x"))
    return n, t, d


def _read_rate(
    dataset: FeatureCacheDataset,
    ids: np.ndarray,
    batch_size: int,
    batches: int,
    rng: np.random.Generator,
    cold: bool,
    root: Path,
    reuse_buffer: bool,
) -> dict[str, Any]:
    if cold:
        drop_page_cache(root)
    cache = dataset.load()  # fresh handle: memory maps opened lazily
    buffer = None
    if reuse_buffer:  # what a loader with a (pinned) staging buffer would do
        buffer = np.zeros((batch_size, cache.tokens, cache.dim), dtype=np.float16)
    tic = time.perf_counter()
    checksum = 0.0
    for _ in range(batches):
        batch = rng.choice(ids, size=batch_size, replace=False).tolist()
        checksum += float(cache.get(batch, out=buffer)[:, 0, 0].astype(np.float32).sum())
    seconds = time.perf_counter() - tic
    images = batch_size * batches
    bytes_per_image = cache.tokens * cache.dim * 2
    cache.close()
    return {
        "state": "cold" if cold else "warm",
        "out_buffer": "reused" if reuse_buffer else "fresh",
        "batch_size": batch_size,
        "batches": batches,
        "images_per_s": images / seconds,
        "mb_per_s": images * bytes_per_image / seconds / 1e6,
        "ms_per_batch": 1e3 * seconds / batches,
        "checksum": checksum,
    }


def run_config(
    root: Path,
    n: int,
    tokens: int,
    dim: int,
    shard_size: int,
    batches: int,
    seed: int,
    prefetch: bool = False,
) -> dict[str, Any]:
    """Writes one cache of ``n`` random (tokens, dim) images and measures it.

    Args:
        root: Directory for the cache (created, not removed).
        n: Number of images.
        tokens: T per image.
        dim: D per token.
        shard_size: Images per shard.
        batches: Random batches per read measurement.
        seed: RNG seed.
        prefetch: ``FeatureCacheDataset(prefetch=...)`` for the reads.

    Returns:
        A JSON-serialisable result dict.
    """
    rng = np.random.default_rng(seed)
    ids = np.array([f"img{i:07d}" for i in range(n)])
    images = pd.DataFrame({"image_id": ids, "path": ids, "content_hash": "h"})
    # One random block reused for every shard keeps the (excluded) encode time small.
    block = rng.standard_normal((min(shard_size, n), tokens, dim), dtype=np.float32).astype(
        np.float16
    )

    def encode(rows: pd.DataFrame) -> np.ndarray:
        return block[: len(rows)]

    job = FeatureExtractionJob(
        images=images,
        cache_key=f"bench-{n}x{tokens}x{dim}",
        description={"n": n, "tokens": tokens, "dim": dim},
        encode=encode,
        shard_size=shard_size,
    )
    dataset = FeatureCacheDataset(filepath=root, prefetch=prefetch)
    dataset.save(job)
    stats = dataset.last_save_stats
    total_bytes = n * tokens * dim * 2
    write_seconds = stats["seconds"] - stats["encode_seconds"]
    result: dict[str, Any] = {
        "images": n,
        "tokens": tokens,
        "dim": dim,
        "shard_size": shard_size,
        "prefetch": prefetch,
        "cache_gb": total_bytes / 1e9,
        "write_seconds": write_seconds,
        "write_mb_per_s": total_bytes / write_seconds / 1e6,
    }
    logger.info(
        "%dx%dx%d: wrote %.2f GB in %.1f s -> %.0f MB/s (fsync included)",
        n,
        tokens,
        dim,
        result["cache_gb"],
        write_seconds,
        result["write_mb_per_s"],
    )
    resave_tic = time.perf_counter()
    dataset.save(job)  # everything cached: only the reuse check runs
    result["noop_resave_seconds"] = time.perf_counter() - resave_tic
    result["reads"] = _read_rates(dataset, ids, batches, rng, root)
    return result


def _read_rates(
    dataset: FeatureCacheDataset,
    ids: np.ndarray,
    batches: int,
    rng: np.random.Generator,
    root: Path,
) -> list[dict[str, Any]]:
    """Random batch reads: warm and cold, fresh and reused ``out``, batch 32 and 128."""
    reads = []
    for cold in (False, True):
        for reuse_buffer in (False, True):
            for batch_size in (32, 128):
                read = _read_rate(dataset, ids, batch_size, batches, rng, cold, root, reuse_buffer)
                reads.append(read)
                logger.info(
                    "  %s read, %s out, batch %3d: %8.0f images/s  %7.0f MB/s  %6.1f ms/batch",
                    read["state"],
                    read["out_buffer"],
                    batch_size,
                    read["images_per_s"],
                    read["mb_per_s"],
                    read["ms_per_batch"],
                )
    return reads


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="4000x65x128,2000x257x1408")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--root", type=Path, default=None, help="cache directory parent")
    parser.add_argument("--keep", action="store_true", help="keep the written caches")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefetch", action="store_true", help="enable WILLNEED hints")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("dqe_cir_pipeline").setLevel(logging.WARNING)

    parent = args.root or Path(tempfile.mkdtemp(prefix="bench_feature_cache_"))
    results = []
    try:
        for text in args.configs.split(","):
            n, tokens, dim = _parse_config(text)
            root = parent / f"cache_{n}x{tokens}x{dim}"
            shutil.rmtree(root, ignore_errors=True)
            results.append(
                run_config(
                    root,
                    n,
                    tokens,
                    dim,
                    args.shard_size,
                    args.batches,
                    args.seed,
                    prefetch=args.prefetch,
                )
            )
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
    finally:
        if not args.keep and args.root is None:
            shutil.rmtree(parent, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    logger.info("%s", json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
