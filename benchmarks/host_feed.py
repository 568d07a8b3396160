"""Host-side feed rates of the GPU path, measured on the CPU (issue 16): can the host keep up?

On the H200 the GPU itself ran ViT-g extraction at 822 images/s and the cached training
step at 901 triplets/s, but end to end the host held them to 267 images/s and 170
triplets/s. This script measures, with no device, what each host-side stage delivers
and compares it with what the GPU needs at 900 images/s or 900 triplets/s:

1. **decode + preprocess** (extraction, and the recompute baseline): generated
   product-like JPEGs (FashionIQ-like, 300-600 px a side) and PNGs, decoded with PIL and
   preprocessed by the project's ``ImagePreprocessor`` (target pad 1.25, bicubic resize
   to 224, centre crop, CLIP normalisation) exactly as ``VitEncoder``'s DataLoader does.
   Reported per core (images / CPU second of one thread, steady under other load), on
   one thread (wall), on N threads and in N DataLoader worker processes. Need: 900
   images/s, so ``900 / per-core rate`` cores.
2. **feature-cache writer** (extraction): random fp16 ViT-g tokens (257 x 1408) written
   as the feature cache writes them (``stored_features`` check + ``write_shard``: ``.npy``
   then its Parquet index, each atomic with fsync, CRC-32 recorded). Need: 900 x 257 x
   1408 x 2 B = 0.65 GB/s.
3. **memory-mapped gather** (cached training): random batches of 3 x B rows (reference,
   target, negative) from that cache through ``FeatureCache.get``: cold (pages dropped
   with ``posix_fadvise(DONTNEED)``; a hypervisor cache may still help), then warm (in
   the page cache), into fresh arrays (what ``host_tokens`` does) and into a reused
   buffer, and through the engine's one-thread prefetch (``model.data.prefetched``),
   also with a simulated GPU step of B / 900 s so that the loop's steady-state
   triplets/s (from the first batch on) answers "can the prefetch feed 900 triplets/s".
   Need: 3 x 257 x 1408 x 2 B x 900 = 1.95 GB/s.
4. **host copy**: memcpy into a reused buffer and into fresh memory (the upper bound of
   any host-side gather), and into pinned memory when CUDA is there.
5. **device side** (only when CUDA is available): host -> device copy from pinned and
   pageable memory, and a gather from device-resident tokens (``index_select``), with
   whether CIRR's and FashionIQ's ViT-g caches would fit in free device memory.

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/host_feed.py --out /tmp/host_feed.json
    PYTHONPATH=src .venv/bin/python benchmarks/host_feed.py --quick   # seconds; the test

Default sizes write a 1.4 GB cache (two 1024-row shards, the project's shard size) in
``--workdir`` (default a temporary directory, removed afterwards unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from bench_feature_cache import _drop_page_cache
from PIL import Image
from torch.utils.data import DataLoader

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache
from dqe_cir_pipeline.datasets.feature_shards import (
    META_FILE,
    file_crc32,
    new_meta,
    read_index,
    read_meta,
    stored_features,
    write_shard,
)
from dqe_cir_pipeline.io_utils import atomic_write_json
from dqe_cir_pipeline.model.data import host_tokens, prefetched

# The project's decode path: the Dataset that VitEncoder's DataLoader runs.
from dqe_cir_pipeline.model.extract import _ImageFiles
from dqe_cir_pipeline.model.preprocess import ImagePreprocessor

#: ViT-g/14 at 224 px (``blip2-itm-vit-g``): 256 patches + CLS, 1408 wide, stored fp16.
VITG_TOKENS = 257
VITG_WIDTH = 1408
VITG_IMAGE_SIZE = 224
ROW_BYTES = VITG_TOKENS * VITG_WIDTH * 2
#: The rates the H200 reached on the bare GPU work (``docs/figures/gpu_bench_h200.json``).
TARGET_IMAGES_PER_S = 900.0
TARGET_TRIPLETS_PER_S = 900.0
#: Bytes/s the host must deliver for them.
NEEDED_GATHER_BYTES_PER_S = 3 * ROW_BYTES * TARGET_TRIPLETS_PER_S
NEEDED_WRITE_BYTES_PER_S = ROW_BYTES * TARGET_IMAGES_PER_S
#: Image files of the real benchmarks (``benchmarks/README.md``, bench_ingestion).
DATASET_IMAGES = {"cirr": 21_551, "fashioniq": 74_381}


@dataclass(frozen=True)
class Sizes:
    """Every size of one run.

    Attributes:
        images: generated files per format (JPEG, PNG).
        passes: times each measurement goes over the files.
        min_side: smallest side of a generated image (pixels).
        max_side: largest side of a generated image (pixels).
        rows: rows (images) in the generated feature cache.
        shard_size: rows per cache shard.
        batch: triplets per simulated training step (3 x ``batch`` rows gathered).
        steps: gathered steps per gather measurement.
        copy_mib: MiB copied per host-copy measurement.
    """

    images: int
    passes: int
    min_side: int
    max_side: int
    rows: int
    shard_size: int
    batch: int
    steps: int
    copy_mib: int


FULL = Sizes(
    images=96,
    passes=2,
    min_side=300,
    max_side=600,
    rows=2048,
    shard_size=1024,
    batch=128,
    steps=10,
    copy_mib=256,
)
QUICK = Sizes(
    images=8,
    passes=1,
    min_side=300,
    max_side=400,
    rows=48,
    shard_size=24,
    batch=4,
    steps=2,
    copy_mib=8,
)


# -- 1. decode + preprocess ---------------------------------------------------------------
def product_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A catalogue-style picture: a striped, slightly noisy garment shape on white.

    Smooth areas, edges and mild texture give JPEG sizes and decode costs close to real
    product photos (pure noise would be far more expensive to decode).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx, cy = width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6)
    rx, ry = width * rng.uniform(0.25, 0.42), height * rng.uniform(0.3, 0.46)
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    stripes = 25.0 * np.sin(xx * rng.uniform(0.05, 0.3) + yy * rng.uniform(0.0, 0.1))
    colour = rng.uniform(30.0, 220.0, size=3).astype(np.float32)
    shade = colour + stripes[..., None] + rng.normal(0.0, 6.0, size=(height, width, 1))
    pixels = np.full((height, width, 3), 248.0, dtype=np.float32)
    pixels[inside] = shade[inside]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_images(folder: Path, sizes: Sizes, fmt: str, seed: int = 0) -> list[str]:
    """Writes ``sizes.images`` product-like images into ``folder``.

    Args:
        folder: where the files go (created).
        sizes: count and side range of the images.
        fmt: ``jpeg`` (quality 90) or ``png``.
        seed: seed of the picture generator.

    Returns:
        The file paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(sizes.images):
        w, h = (int(v) for v in rng.integers(sizes.min_side, sizes.max_side + 1, size=2))
        path = folder / f"img{i:05d}.{'jpg' if fmt == 'jpeg' else 'png'}"
        image = product_image(rng, w, h)
        if fmt == "jpeg":
            image.save(path, format="JPEG", quality=90)
        else:
            image.save(path, format="PNG")
        paths.append(str(path))
    return paths


def _decoded(path: str) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _decode_only(path: str) -> int:
    return _decoded(path).size[0]


def _timed_serial(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """Runs ``fn(i)`` for ``i < n`` on this thread; returns (wall s, this thread's CPU s)."""
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        fn(i)
    return time.perf_counter() - wall0, time.thread_time() - cpu0


def decode_rates(paths: Sequence[str], sizes: Sizes, threads: int) -> dict[str, Any]:
    """Images/s of decode + preprocess for one format, per core and in parallel.

    Args:
        paths: the image files.
        sizes: run sizes (``passes`` over the files per measurement).
        threads: threads and DataLoader worker processes of the parallel figures.

    Returns:
        ``per_core_images_per_s`` (images / CPU s of one thread: decode + preprocess),
        ``decode_only_per_core_images_per_s`` (PIL decode to RGB),
        ``preprocess_only_per_core_images_per_s`` (``ImagePreprocessor`` on decoded
        images: pad, bicubic resize, crop, normalise), ``one_thread_images_per_s`` (wall),
        ``threads_images_per_s``, ``workers_images_per_s`` (wall) and file sizes.
    """
    dataset = _ImageFiles(paths, ImagePreprocessor(VITG_IMAGE_SIZE))
    n = len(paths) * sizes.passes
    for i in range(min(len(paths), 4)):  # warm-up: page cache, allocator, libjpeg tables
        dataset[i]
    wall, cpu = _timed_serial(lambda i: dataset[i % len(paths)], n)
    wall_dec, cpu_dec = _timed_serial(lambda i: _decode_only(paths[i % len(paths)]), n)
    decoded = [_decoded(p) for p in paths]
    preprocess = ImagePreprocessor(VITG_IMAGE_SIZE)
    _, cpu_pre = _timed_serial(lambda i: preprocess(decoded[i % len(paths)]), n)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda i: dataset[i % len(paths)], range(n)))
    threads_wall = time.perf_counter() - t0

    loader = DataLoader(
        _ImageFiles(list(paths) * sizes.passes, ImagePreprocessor(VITG_IMAGE_SIZE)),
        batch_size=max(1, min(32, n // max(threads, 1))),
        num_workers=threads,
        persistent_workers=True,
    )
    for _ in loader:  # first epoch starts the workers
        pass
    t0 = time.perf_counter()
    for _ in loader:
        pass
    workers_wall = time.perf_counter() - t0
    del loader

    file_bytes = [os.path.getsize(p) for p in paths]
    return {
        "files": len(paths),
        "images_timed": n,
        "mean_file_kib": float(np.mean(file_bytes)) / 1024,
        "per_core_images_per_s": n / cpu,
        "decode_only_per_core_images_per_s": n / cpu_dec,
        "decode_share_of_cpu": cpu_dec / cpu,
        "preprocess_only_per_core_images_per_s": n / cpu_pre,
        "preprocess_share_of_cpu": cpu_pre / cpu,
        "one_thread_images_per_s": n / wall,
        "decode_only_one_thread_images_per_s": n / wall_dec,
        "threads": threads,
        "threads_images_per_s": n / threads_wall,
        "workers": threads,
        "workers_images_per_s": n / workers_wall,
        "cores_for_target": TARGET_IMAGES_PER_S / (n / cpu),
    }


# -- 2. writer ----------------------------------------------------------------------------
def _random_tokens(rows: int, rng: np.random.Generator) -> np.ndarray:
    """(rows, 257, 1408) float16 tokens, as ``VitEncoder`` returns them.

    A random block of up to 16 rows, repeated (the content does not change I/O rates).
    """
    block = rng.standard_normal((min(rows, 16), VITG_TOKENS, VITG_WIDTH), dtype=np.float32)
    return block.astype(np.float16)[np.arange(rows) % len(block)]


def write_cache(key_dir: Path, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """Writes a ViT-g feature cache the way ``FeatureCacheDataset.save`` does, timed.

    Per shard: ``stored_features`` (contiguity and finiteness check of the encoder's
    float16 output) then ``write_shard`` (``.npy``, CRC-32, fsync, rename; then the
    Parquet index). The encoder's output is made before the clock starts.

    Returns:
        ``bytes``, ``seconds`` and ``gb_per_s`` of the whole write, the same without the
        check (``write_shard`` only), and one shard's split: ``np.save`` to the page
        cache, CRC-32 read-back, fsync.
    """
    rng = np.random.default_rng(seed)
    key_dir.mkdir(parents=True, exist_ok=True)
    check_s = write_s = 0.0
    meta: dict[str, Any] | None = None
    for index, start in enumerate(range(0, sizes.rows, sizes.shard_size)):
        n = min(sizes.shard_size, sizes.rows - start)
        encoded = _random_tokens(n, rng)
        batch = pd.DataFrame(
            {
                "image_id": [f"img{start + i:07d}" for i in range(n)],
                "content_hash": [f"h{start + i:07d}" for i in range(n)],
            }
        )
        t0 = time.perf_counter()
        features = stored_features(encoded, n, meta)
        t1 = time.perf_counter()
        if meta is None:
            meta = new_meta(key_dir.name, {"benchmark": "host_feed"}, features)
            atomic_write_json(key_dir / META_FILE, meta)
        write_shard(key_dir, index, batch, features)
        t2 = time.perf_counter()
        check_s += t1 - t0
        write_s += t2 - t1
        del encoded, features
    total = sizes.rows * ROW_BYTES

    # One shard's split, on a scratch file next to the cache (removed).
    scratch = key_dir.parent / "scratch.npy"
    sample = _random_tokens(sizes.shard_size, rng)
    t0 = time.perf_counter()
    np.save(scratch, sample)
    t1 = time.perf_counter()
    file_crc32(scratch)
    t2 = time.perf_counter()
    fd = os.open(scratch, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    t3 = time.perf_counter()
    scratch.unlink()
    shard_bytes = sample.nbytes
    return {
        "rows": sizes.rows,
        "shard_rows": sizes.shard_size,
        "bytes": total,
        "seconds": check_s + write_s,
        "gb_per_s": total / (check_s + write_s) / 1e9,
        "write_shard_gb_per_s": total / write_s / 1e9,
        "check_gb_per_s": total / check_s / 1e9,
        "split_np_save_gb_per_s": shard_bytes / (t1 - t0) / 1e9,
        "split_crc32_gb_per_s": shard_bytes / (t2 - t1) / 1e9,
        "split_fsync_gb_per_s": shard_bytes / max(t3 - t2, 1e-9) / 1e9,
        "images_per_s_equivalent": (total / (check_s + write_s)) / ROW_BYTES,
    }


# -- 3. gather ----------------------------------------------------------------------------
def _plan(ids: Sequence[str], sizes: Sizes, rng: np.random.Generator) -> list[list[list[str]]]:
    """``steps`` steps of three random id groups (reference, target, negative) of ``batch``."""
    pool = np.asarray(ids)
    return [
        [pool[rng.integers(0, len(pool), size=sizes.batch)].tolist() for _ in range(3)]
        for _ in range(sizes.steps)
    ]


def _touch(key_dir: Path) -> None:
    """Reads every shard file once so that its pages are in the page cache."""
    buffer = bytearray(8 << 20)
    for path in sorted(key_dir.glob("shard-*.npy")):
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buffer):
                pass


def _step_bytes(sizes: Sizes) -> int:
    return 3 * sizes.batch * ROW_BYTES


def gather_rates(key_dir: Path, sizes: Sizes, seed: int = 0) -> dict[str, Any]:
    """GB/s of random-row gathers from the memory-mapped cache, cold and warm.

    Returns:
        ``cold_gb_per_s`` (fresh arrays, pages dropped first), ``warm_gb_per_s`` (fresh
        arrays: ``host_tokens``, the engine's path), ``warm_reused_buffer_gb_per_s``
        (``FeatureCache.get(out=...)``), ``prefetch_gb_per_s`` (``prefetched``, the
        consumer doing nothing) and ``prefetch_simulated_step_triplets_per_s`` (the
        consumer sleeping ``batch / 900`` s per step, as a 900 triplets/s GPU would;
        steady state from the first batch on, and ``..._with_fill_...`` from the start).
    """
    rng = np.random.default_rng(seed)
    meta = read_meta(key_dir)
    if meta is None:
        raise FileNotFoundError(f"no feature cache in {key_dir}")
    index = read_index(key_dir)
    ids = index["image_id"].tolist()
    step_bytes = _step_bytes(sizes)
    res: dict[str, Any] = {
        "rows": len(ids),
        "cache_bytes": len(ids) * ROW_BYTES,
        "batch": sizes.batch,
        "steps": sizes.steps,
        "step_bytes": step_bytes,
    }

    def run(plan: list[list[list[str]]], fn: Callable[[FeatureCache, list[str]], object]) -> float:
        cache = FeatureCache(root=key_dir, meta=meta, index=index)
        t0 = time.perf_counter()
        for groups in plan:
            for group in groups:
                fn(cache, group)
        seconds = time.perf_counter() - t0
        cache.close()
        return step_bytes * len(plan) / seconds / 1e9

    _drop_page_cache(key_dir)
    res["cold_gb_per_s"] = run(_plan(ids, sizes, rng), host_tokens)
    _touch(key_dir)
    res["warm_gb_per_s"] = run(_plan(ids, sizes, rng), host_tokens)
    buffer = np.empty((sizes.batch, VITG_TOKENS, VITG_WIDTH), dtype=np.float16)
    res["warm_reused_buffer_gb_per_s"] = run(
        _plan(ids, sizes, rng), lambda cache, group: cache.get(group, out=buffer)
    )

    pin = torch.cuda.is_available()
    res["prefetch_pinned"] = pin
    for simulated in (False, True):
        plan = _plan(ids, sizes, rng)
        step_s = sizes.batch / TARGET_TRIPLETS_PER_S
        cache = FeatureCache(root=key_dir, meta=meta, index=index)
        t0 = time.perf_counter()
        first = t0
        for k, _ in enumerate(prefetched(cache, plan, pin=pin)):
            if k == 0:
                first = time.perf_counter()  # the pipeline is full from here on
            if simulated:
                time.sleep(step_s)
        end = time.perf_counter()
        cache.close()
        if simulated:
            res["simulated_step_s"] = step_s
            # Steady state: every step's sleep after the first batch arrived, and the
            # gathers of all later batches, which the prefetch should hide.
            res["prefetch_simulated_step_triplets_per_s"] = sizes.batch * len(plan) / (end - first)
            res["prefetch_simulated_step_with_fill_triplets_per_s"] = (
                sizes.batch * len(plan) / (end - t0)
            )
        else:
            res["prefetch_gb_per_s"] = step_bytes * len(plan) / (end - t0) / 1e9
    best = max(res["warm_gb_per_s"], res["prefetch_gb_per_s"])
    res["warm_triplets_per_s_equivalent"] = best * 1e9 / (3 * ROW_BYTES)
    return res


# -- 4. host copy -------------------------------------------------------------------------
def _copy_gb_per_s(dst_factory: Callable[[], np.ndarray], src: np.ndarray, repeats: int) -> float:
    t0 = time.perf_counter()
    for _ in range(repeats):
        np.copyto(dst_factory(), src)
    return src.nbytes * repeats / (time.perf_counter() - t0) / 1e9


def copy_rates(sizes: Sizes, repeats: int = 4) -> dict[str, Any]:
    """Host memcpy GB/s: into a reused buffer, into fresh memory, into pinned memory."""
    src = np.ones(sizes.copy_mib << 20, dtype=np.uint8)
    reused = np.empty_like(src)
    res: dict[str, Any] = {"bytes": src.nbytes, "repeats": repeats}
    res["reused_gb_per_s"] = _copy_gb_per_s(lambda: reused, src, repeats)
    res["fresh_gb_per_s"] = _copy_gb_per_s(lambda: np.empty_like(src), src, repeats)
    if torch.cuda.is_available():
        pinned = torch.empty(src.nbytes, dtype=torch.uint8, pin_memory=True)
        res["pinned_gb_per_s"] = _copy_gb_per_s(lambda: pinned.numpy(), src, repeats)
    else:
        res["pinned_gb_per_s"] = None  # page-locked memory needs a CUDA build and device
    return res


# -- 5. device side (CUDA only) -----------------------------------------------------------
def cuda_rates(sizes: Sizes, repeats: int = 5) -> dict[str, Any]:
    """H2D / D2H GB/s and a device-resident gather; whether the real caches would fit."""
    device = torch.device("cuda")
    nbytes = max(sizes.copy_mib, 64) << 20
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    pageable = torch.empty(nbytes, dtype=torch.uint8)
    on_device = torch.empty(nbytes, dtype=torch.uint8, device=device)

    def timed(fn: Callable[[], object]) -> float:
        fn()
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize(device)
        return nbytes * repeats / (time.perf_counter() - t0) / 1e9

    res: dict[str, Any] = {"device": torch.cuda.get_device_name(device), "bytes": nbytes}
    res["h2d_pinned_gb_per_s"] = timed(lambda: on_device.copy_(pinned, non_blocking=True))
    res["h2d_pageable_gb_per_s"] = timed(lambda: on_device.copy_(pageable))
    res["d2h_pinned_gb_per_s"] = timed(lambda: pinned.copy_(on_device, non_blocking=True))

    tokens = torch.randn(sizes.rows, VITG_TOKENS, VITG_WIDTH, device=device).half()
    rows = torch.randint(0, sizes.rows, (3 * sizes.batch,), device=device)
    step = 3 * sizes.batch * ROW_BYTES
    torch.index_select(tokens, 0, rows)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.index_select(tokens, 0, rows)
    torch.cuda.synchronize(device)
    res["resident_gather_gb_per_s"] = step * repeats / (time.perf_counter() - t0) / 1e9
    del tokens
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    res["free_gib"], res["total_gib"] = free / 2**30, total / 2**30
    for name, images in DATASET_IMAGES.items():
        res[f"{name}_cache_gib"] = images * ROW_BYTES / 2**30
        res[f"{name}_fits_on_device"] = images * ROW_BYTES < 0.8 * free
    return res


# -- summary ------------------------------------------------------------------------------
def verdicts(res: dict[str, Any]) -> dict[str, Any]:
    """What each stage delivers against what the GPU needs, and whether it can feed it."""
    out: dict[str, Any] = {
        "needs": {
            "extraction_images_per_s": TARGET_IMAGES_PER_S,
            "writer_gb_per_s": NEEDED_WRITE_BYTES_PER_S / 1e9,
            "cached_step_triplets_per_s": TARGET_TRIPLETS_PER_S,
            "gather_gb_per_s": NEEDED_GATHER_BYTES_PER_S / 1e9,
        }
    }
    cores = os.cpu_count() or 1
    for fmt in ("jpeg", "png"):
        dec = res["decode"][fmt]
        out[f"decode_{fmt}_cores_needed"] = math.ceil(dec["cores_for_target"])
        out[f"decode_{fmt}_feeds_900_on_this_host"] = dec["cores_for_target"] <= cores
    out["writer_feeds_900"] = res["writer"]["gb_per_s"] * 1e9 >= NEEDED_WRITE_BYTES_PER_S
    gather = res["gather"]
    out["gather_warm_feeds_900"] = gather["warm_gb_per_s"] * 1e9 >= NEEDED_GATHER_BYTES_PER_S
    out["gather_cold_feeds_900"] = gather["cold_gb_per_s"] * 1e9 >= NEEDED_GATHER_BYTES_PER_S
    out["prefetch_reaches_900_with_simulated_step"] = (
        gather["prefetch_simulated_step_triplets_per_s"] >= 0.95 * TARGET_TRIPLETS_PER_S
    )
    return out


def _row(stage: str, measured: str, need: str = "", verdict: str = "") -> str:
    return f"{stage:<44}{measured:>22}{need:>14}  {verdict}"


def format_table(res: dict[str, Any]) -> str:
    """The figures against the needs, one line per stage."""
    v, g, w, c = res["verdicts"], res["gather"], res["writer"], res["copy"]
    lines = [_row("stage", "measured", "needed", "verdict"), "-" * 100]
    for fmt in ("jpeg", "png"):
        d = res["decode"][fmt]
        lines += [
            _row(
                f"decode+preprocess {fmt}, per core (CPU time)",
                f"{d['per_core_images_per_s']:.0f} img/s",
                "900 img/s",
                f"{v[f'decode_{fmt}_cores_needed']} cores "
                f"(decode {100 * d['decode_share_of_cpu']:.0f} %, preprocess "
                f"{100 * d['preprocess_share_of_cpu']:.0f} % of it)",
            ),
            _row("  one thread (wall)", f"{d['one_thread_images_per_s']:.0f} img/s"),
            _row(
                f"  {d['threads']} threads / {d['workers']} workers (wall)",
                f"{d['threads_images_per_s']:.0f} / {d['workers_images_per_s']:.0f} img/s",
                "",
                "",
            ),
        ]
    lines += [
        _row(
            "writer: check + write_shard (fsync)",
            f"{w['gb_per_s']:.2f} GB/s",
            f"{NEEDED_WRITE_BYTES_PER_S / 1e9:.2f} GB/s",
            "feeds 900 img/s" if v["writer_feeds_900"] else "too slow for 900 img/s",
        ),
        _row(
            "  split: np.save / crc32 / fsync",
            f"{w['split_np_save_gb_per_s']:.1f}/{w['split_crc32_gb_per_s']:.1f}/"
            f"{w['split_fsync_gb_per_s']:.1f}",
            "",
            f"check {w['check_gb_per_s']:.1f} GB/s",
        ),
        _row(
            "gather cold (pages dropped), fresh arrays",
            f"{g['cold_gb_per_s']:.2f} GB/s",
            f"{NEEDED_GATHER_BYTES_PER_S / 1e9:.2f} GB/s",
            "feeds" if v["gather_cold_feeds_900"] else "too slow",
        ),
        _row(
            "gather warm, fresh arrays (host_tokens)",
            f"{g['warm_gb_per_s']:.2f} GB/s",
            f"{NEEDED_GATHER_BYTES_PER_S / 1e9:.2f} GB/s",
            "feeds" if v["gather_warm_feeds_900"] else "too slow",
        ),
        _row("gather warm, reused out buffer", f"{g['warm_reused_buffer_gb_per_s']:.2f} GB/s"),
        _row("gather warm, prefetch thread", f"{g['prefetch_gb_per_s']:.2f} GB/s"),
        _row(
            f"prefetch + simulated {1e3 * g['simulated_step_s']:.0f} ms step",
            f"{g['prefetch_simulated_step_triplets_per_s']:.0f} trip/s",
            "900 trip/s",
            "reaches it" if v["prefetch_reaches_900_with_simulated_step"] else "host-bound",
        ),
        _row(
            "memcpy reused / fresh",
            f"{c['reused_gb_per_s']:.1f}/{c['fresh_gb_per_s']:.1f} GB/s",
            "",
            "",
        ),
    ]
    if c.get("pinned_gb_per_s"):
        lines.append(_row("memcpy into pinned", f"{c['pinned_gb_per_s']:.1f} GB/s"))
    cu = res.get("cuda")
    if cu and "error" in cu:
        lines.append(_row("CUDA section", "failed", "", cu["error"][:60]))
    elif cu:
        lines += [
            _row(
                "H2D pinned / pageable",
                f"{cu['h2d_pinned_gb_per_s']:.1f}/{cu['h2d_pageable_gb_per_s']:.1f} GB/s",
                f"{NEEDED_GATHER_BYTES_PER_S / 1e9:.2f} GB/s",
                "",
            ),
            _row(
                "device-resident gather",
                f"{cu['resident_gather_gb_per_s']:.0f} GB/s",
                "",
                f"CIRR fits {cu['cirr_fits_on_device']}, FIQ fits {cu['fashioniq_fits_on_device']}",
            ),
        ]
    return "\n".join(lines)


def _all_finite(obj: Any) -> bool:
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point: runs every section, prints the table, optionally writes JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: seconds (the test)")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(1)  # decode workers run single-threaded; so does this process
    work = args.workdir or Path(tempfile.mkdtemp(prefix="host_feed_"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    res: dict[str, Any] = {
        "env": {
            "cpu_count": os.cpu_count(),
            "load_average_start": list(os.getloadavg()),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pillow": Image.__version__,
            "cuda": torch.cuda.is_available(),
            "workdir": str(work),
        },
        "sizes": asdict(sizes),
        "row_bytes": ROW_BYTES,
    }
    try:
        res["decode"] = {}
        for fmt in ("jpeg", "png"):
            paths = make_images(work / fmt, sizes, fmt)
            res["decode"][fmt] = decode_rates(paths, sizes, args.threads)
        key_dir = work / "cache" / "host-feed-vitg"
        res["writer"] = write_cache(key_dir, sizes)
        res["gather"] = gather_rates(key_dir, sizes)
        res["copy"] = copy_rates(sizes)
        res["cuda"] = None
        if torch.cuda.is_available():
            try:  # never run here (no GPU): a failure must not lose the host figures
                res["cuda"] = cuda_rates(sizes)
            except Exception as err:  # noqa: BLE001 - recorded in the JSON
                res["cuda"] = {"error": f"{type(err).__name__}: {err}"[:500]}
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    res["verdicts"] = verdicts(res)
    res["env"]["load_average_end"] = list(os.getloadavg())
    res["env"]["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    res["total_s"] = time.perf_counter() - start
    res["all_finite"] = _all_finite(res)
    print(format_table(res))
    print(
        f"total {res['total_s']:.1f} s; load average {res['env']['load_average_start'][0]:.1f} "
        f"-> {res['env']['load_average_end'][0]:.1f} on {os.cpu_count()} cores"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
        print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
