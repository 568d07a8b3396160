"""Host-side feed rates of the GPU path, measured without a GPU: can the host keep up?

Measures what each host-side stage delivers and sets it against what a GPU needs fed
at 900 images/s (extraction) or 900 triplets/s (the cached training step):

1. **decode + preprocess**: generated product-like JPEGs (300-600 px a side) and PNGs,
   decoded with PIL and preprocessed by the project's ``ImagePreprocessor``; per core
   (images per CPU second of one thread), on one thread, on N threads and in N
   DataLoader workers. Need: 900 images/s.
2. **feature-cache writer**: random fp16 ViT-g tokens (257 x 1408) through
   ``stored_features`` + ``write_shard`` (fsync, CRC-32), split into ``np.save``,
   CRC-32 and fsync for one shard. Need: 0.65 GB/s.
3. **memory-mapped gather**: random batches of 3 x B rows through ``FeatureCache``,
   cold (pages dropped) and warm, into fresh arrays (``host_tokens``) and a reused
   buffer, on the engine's prefetch thread (``prefetched``), and with a simulated
   B / 900 s GPU step. Need: 1.95 GB/s.
4. **host memcpy** into a reused buffer, fresh memory and (CUDA) pinned memory.
5. **on CUDA only**: host <-> device copies, a gather from device-resident tokens,
   and whether CIRR's and FashionIQ's ViT-g caches would fit in free device memory.

Run from the repository root::

    PYTHONPATH=src python benchmarks/bench_host_feed.py --quick          # seconds
    PYTHONPATH=src python benchmarks/bench_host_feed.py --threads 2 --out /tmp/host_feed.json

The default sizes write a 1.4 GB cache (two 1024-row shards) under ``--workdir``
(default a temporary directory, removed afterwards unless ``--keep``). The figures
measured so far, and what they mean for the GPU path, are in ``docs/gpu.md``.
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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from _host_feed_stages import (
    FULL,
    NEEDED_GATHER_BYTES_PER_S,
    NEEDED_WRITE_BYTES_PER_S,
    QUICK,
    ROW_BYTES,
    TARGET_IMAGES_PER_S,
    TARGET_TRIPLETS_PER_S,
    copy_rates,
    cuda_rates,
    decode_rates,
    gather_rates,
    make_images,
    write_cache,
)
from PIL import Image


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


def _decode_rows(res: dict[str, Any]) -> list[str]:
    v = res["verdicts"]
    lines = []
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
    return lines


def _cache_rows(res: dict[str, Any]) -> list[str]:
    v, g, w = res["verdicts"], res["gather"], res["writer"]
    gather_need = f"{NEEDED_GATHER_BYTES_PER_S / 1e9:.2f} GB/s"
    return [
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
            gather_need,
            "feeds" if v["gather_cold_feeds_900"] else "too slow",
        ),
        _row(
            "gather warm, fresh arrays (host_tokens)",
            f"{g['warm_gb_per_s']:.2f} GB/s",
            gather_need,
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
    ]


def _copy_rows(res: dict[str, Any]) -> list[str]:
    c = res["copy"]
    lines = [
        _row(
            "memcpy reused / fresh",
            f"{c['reused_gb_per_s']:.1f}/{c['fresh_gb_per_s']:.1f} GB/s",
            "",
            "",
        )
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
    return lines


def format_table(res: dict[str, Any]) -> str:
    """The figures against the needs, one line per stage."""
    lines = [_row("stage", "measured", "needed", "verdict"), "-" * 100]
    lines += _decode_rows(res) + _cache_rows(res) + _copy_rows(res)
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
            try:  # a failure of the device section must not lose the host figures
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
