"""The measured stages of ``bench_host_feed.py``: what the host side of the GPU path delivers.

1. decode + preprocess of generated product-like JPEGs and PNGs (the project's
   ``ImagePreprocessor``, as ``VitEncoder``'s DataLoader runs it);
2. the feature-cache writer (``stored_features`` + ``write_shard``);
3. random-row gathers from the memory-mapped cache (``FeatureCache``, ``host_tokens``,
   ``prefetched``), cold and warm;
4. host memcpy;
5. on CUDA only: host <-> device copies and a gather from device-resident tokens.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from _measure import drop_page_cache
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
from dqe_cir_pipeline.model.extract import ImageFiles
from dqe_cir_pipeline.model.preprocess import ImagePreprocessor

#: ViT-g/14 at 224 px (``blip2-itm-vit-g``): 256 patches + CLS, 1408 wide, stored fp16.
VITG_TOKENS = 257
VITG_WIDTH = 1408
VITG_IMAGE_SIZE = 224
ROW_BYTES = VITG_TOKENS * VITG_WIDTH * 2
#: The rates the host must feed: the bare GPU work's rates on an H200 (docs/gpu.md).
TARGET_IMAGES_PER_S = 900.0
TARGET_TRIPLETS_PER_S = 900.0
#: Bytes/s the host must deliver for them.
NEEDED_GATHER_BYTES_PER_S = 3 * ROW_BYTES * TARGET_TRIPLETS_PER_S
NEEDED_WRITE_BYTES_PER_S = ROW_BYTES * TARGET_IMAGES_PER_S
#: Image files of the real benchmarks (what their ViT-g caches would hold).
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
    dataset = ImageFiles(paths, ImagePreprocessor(VITG_IMAGE_SIZE))
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
        ImageFiles(list(paths) * sizes.passes, ImagePreprocessor(VITG_IMAGE_SIZE)),
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

    drop_page_cache(key_dir)
    res["cold_gb_per_s"] = run(_plan(ids, sizes, rng), host_tokens)
    _touch(key_dir)
    res["warm_gb_per_s"] = run(_plan(ids, sizes, rng), host_tokens)
    buffer = np.empty((sizes.batch, VITG_TOKENS, VITG_WIDTH), dtype=np.float16)
    res["warm_reused_buffer_gb_per_s"] = run(
        _plan(ids, sizes, rng), lambda cache, group: cache.get(group, out=buffer)
    )

    res.update(
        _prefetch_rates(lambda: FeatureCache(root=key_dir, meta=meta, index=index), ids, sizes, rng)
    )
    best = max(res["warm_gb_per_s"], res["prefetch_gb_per_s"])
    res["warm_triplets_per_s_equivalent"] = best * 1e9 / (3 * ROW_BYTES)
    return res


def _prefetch_rates(
    open_cache: Callable[[], FeatureCache],
    ids: Sequence[str],
    sizes: Sizes,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """The engine's one-thread prefetch (``prefetched``): idle consumer, then a simulated step.

    The simulated step sleeps ``batch / 900`` s, as a 900 triplets/s GPU would; its
    steady state counts from the first batch on (``..._with_fill_...`` from the start).
    """
    pin = torch.cuda.is_available()
    res: dict[str, Any] = {"prefetch_pinned": pin}
    for simulated in (False, True):
        plan = _plan(ids, sizes, rng)
        step_s = sizes.batch / TARGET_TRIPLETS_PER_S
        cache = open_cache()
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
            res["prefetch_gb_per_s"] = _step_bytes(sizes) * len(plan) / (end - t0) / 1e9
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
