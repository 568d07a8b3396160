"""Benchmark frozen-ViT feature extraction: model-only and end-to-end images/s, MFU.

* **model-only**: random pixel tensors already on the device, ``encode_vit`` (the
  ``inference_mode`` forward the feature cache uses) in batches, bf16 autocast on CUDA.
* **end to end**: ``N`` generated PNG files -> ``VitEncoder`` from
  ``model/extract.py`` (DataLoader with ``--workers`` decoding + ``ImagePreprocessor``,
  ViT forward, fp16 tokens copied to the host) -> written into a numpy ``.npy`` memmap
  and flushed. Reported as images/s and as % of the model-only rate.

FLOPs of one ViT forward, counted analytically (matmuls only; layer norms, softmax,
GELU and the bias adds are ignored), with T tokens, width D, MLP width M, L layers,
patch p::

    per layer multiply-adds = 4 T D^2      (Q, K, V and output projections)
                            + 2 T D M      (MLP up and down)
                            + 2 T^2 D      (Q K^T and attention x V)
    FLOPs = 2 x multiply-adds x L  +  2 (T - 1) (3 p^2) D   (patch embedding)

With M = 4D the per-layer term is the familiar 24 T D^2 + 4 T^2 D FLOPs (which already
includes the factor 2). ViT-g/14 at 224 px (T=257, D=1408, M=6144, L=39): 0.52 TFLOP per
image. MFU = achieved FLOP/s / *measured* peak, the peak being the mean of 10 square
bf16 matmuls (8192^3 on CUDA after 3 warm-ups; on CPU a 2048^3 fp32 matmul, reported
for completeness only).

Usage::

    .venv/bin/python benchmarks/bench_extraction.py --preset tiny --images 512 --batch 64
    .venv/bin/python benchmarks/bench_extraction.py --preset vitg --images 2048 --batch 256 \
        --workers 12 --device cuda --out gpu_extract.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from bench_training_step import BenchModel, build_model, sync, write_random_pngs

from dqe_cir_pipeline.model.backbone import Backbone, encode_vit
from dqe_cir_pipeline.model.device import autocast, resolve_device
from dqe_cir_pipeline.model.extract import VitEncoder
from dqe_cir_pipeline.model.preprocess import ImagePreprocessor


def vit_forward_flops(tokens: int, width: int, mlp: int, layers: int, patch: int) -> float:
    """Analytic FLOPs of one image through the ViT (see the module docstring)."""
    t, d, m = float(tokens), float(width), float(mlp)
    per_layer_macs = 4 * t * d * d + 2 * t * d * m + 2 * t * t * d
    patch_macs = (t - 1) * 3 * patch * patch * d
    return 2.0 * (per_layer_macs * layers + patch_macs)


def matmul_peak(
    device: torch.device, n: int | None = None, warmup: int = 3, iters: int = 10
) -> dict[str, Any]:
    """Measured dense matmul peak: mean FLOP/s of ``iters`` (n x n) @ (n x n) products.

    bf16 on CUDA (n = 8192 by default), fp32 on CPU (n = 2048).

    Returns:
        ``{"peak_tflops", "n", "dtype", "iters"}``.
    """
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(warmup):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    sec = (time.perf_counter() - t0) / iters
    return {"peak_tflops": 2.0 * n**3 / sec / 1e12, "n": n, "dtype": str(dtype), "iters": iters}


def model_only_rate(
    bench: BenchModel,
    device: torch.device,
    batch: int,
    batches: int,
    warmup: int = 2,
    amp_dtype: str = "bfloat16",
) -> float:
    """Images/s of ``encode_vit`` on random pixels already on the device."""
    s = bench.image_size
    pixels = torch.randn(batch, 3, s, s, device=device)
    for _ in range(warmup):
        with autocast(device, amp_dtype):
            encode_vit(bench.model, pixels)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        with autocast(device, amp_dtype):
            encode_vit(bench.model, pixels)
    sync(device)
    return batch * batches / (time.perf_counter() - t0)


def end_to_end_rate(
    bench: BenchModel,
    device: torch.device,
    paths: Sequence[str],
    out_file: Path,
    batch: int,
    workers: int,
    amp_dtype: str = "bfloat16",
) -> float:
    """Images/s of PNG files -> ``VitEncoder`` -> fp16 ``.npy`` memmap on disk (flushed)."""
    backbone = Backbone(
        model=bench.model,
        tokenizer=None,
        preprocessor=ImagePreprocessor(bench.image_size),  # type: ignore[arg-type]
        key="bench",
        name=bench.preset,
    )
    encoder = VitEncoder(
        backbone, device, batch_size=batch, num_workers=workers, amp_dtype=amp_dtype
    )
    encoder(list(paths[: min(len(paths), batch)]))  # warm-up (kernels, page cache)
    sync(device)
    t0 = time.perf_counter()
    feats = encoder(list(paths))
    mm = np.lib.format.open_memmap(out_file, mode="w+", dtype=np.float16, shape=feats.shape)
    mm[:] = feats
    mm.flush()
    sec = time.perf_counter() - t0
    del mm
    return len(paths) / sec


def run_extraction_bench(
    bench: BenchModel,
    device: torch.device,
    *,
    images: int,
    batch: int,
    workers: int,
    unique_images: int | None = None,
    model_batches: int | None = None,
    amp_dtype: str = "bfloat16",
    peak: dict[str, Any] | None = None,
    png_size: tuple[int, int] | None = None,
    tmp_root: str | None = None,
    seed: int = 0,
    into: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Model-only and end-to-end extraction rates, FLOPs and MFU.

    Args:
        bench: the model (only its vision encoder runs).
        device: compute device.
        images: images pushed through end to end (``unique_images`` distinct PNGs, cycled).
        batch: images per forward.
        workers: DataLoader decode workers (end to end).
        unique_images: distinct PNG files written (default ``images``).
        model_batches: timed model-only batches (default: about ``images / batch``, >= 3).
        amp_dtype: autocast dtype on CUDA.
        peak: a precomputed :func:`matmul_peak` result (measured here if None).
        png_size: (w, h) of the PNGs (default 1.25 S x S: exercises target-pad + resize).
        tmp_root: parent of the temporary folder.
        seed: RNG seed.
        into: dict filled in place as figures arrive (partial figures survive an abort).

    Returns:
        Flat dict of figures.
    """
    flops = vit_forward_flops(bench.tokens, bench.width, bench.mlp, bench.layers, bench.patch_size)
    peak = peak or matmul_peak(device)
    nb = model_batches or max(3, images // batch)
    res = into if into is not None else {}
    res.update(
        {
            "preset": bench.preset,
            "device": str(device),
            "batch": batch,
            "workers": workers,
            "amp_dtype": amp_dtype if device.type == "cuda" else "float32",
            "gflop_per_image": flops / 1e9,
            "peak_tflops": peak["peak_tflops"],
            "peak_matmul": f"{peak['n']}^3 {peak['dtype']}",
        }
    )
    rate = model_only_rate(bench, device, batch, nb, amp_dtype=amp_dtype)
    res["model_only_images_per_s"] = rate
    res["model_only_tflops"] = rate * flops / 1e12
    res["model_only_mfu"] = res["model_only_tflops"] / peak["peak_tflops"]

    uniq = unique_images or images
    s = bench.image_size
    w, h = png_size or (int(round(1.25 * s)), s)
    with tempfile.TemporaryDirectory(prefix="bench_extract_", dir=tmp_root) as tmp:
        t0 = time.perf_counter()
        files = write_random_pngs(Path(tmp) / "png", uniq, (w, h), seed)
        res["setup_png_s"] = time.perf_counter() - t0
        paths = [files[i % uniq] for i in range(images)]
        e2e = end_to_end_rate(
            bench, device, paths, Path(tmp) / "feats.npy", batch, workers, amp_dtype
        )
    res.update({"images": images, "unique_pngs": uniq, "png_size": [w, h]})
    res["e2e_images_per_s"] = e2e
    res["e2e_tflops"] = e2e * flops / 1e12
    res["e2e_mfu"] = res["e2e_tflops"] / peak["peak_tflops"]
    res["e2e_pct_of_model_only"] = 100.0 * e2e / rate
    return res


def format_report(res: dict[str, Any]) -> str:
    """Human-readable lines of the figures."""
    return "\n".join(
        [
            f"preset {res['preset']} on {res['device']} ({res['amp_dtype']}), batch "
            f"{res['batch']}, "
            f"{res['gflop_per_image']:.2f} GFLOP/image, measured peak "
            f"{res['peak_tflops']:.2f} TFLOP/s "
            f"({res['peak_matmul']})",
            f"  model-only  {res['model_only_images_per_s']:10.1f} images/s  "
            f"{res['model_only_tflops']:.3f} TFLOP/s  MFU {100 * res['model_only_mfu']:.1f}%",
            f"  end to end  {res['e2e_images_per_s']:10.1f} images/s  "
            f"{res['e2e_tflops']:.3f} TFLOP/s  MFU {100 * res['e2e_mfu']:.1f}%  "
            f"= {res['e2e_pct_of_model_only']:.1f}% of model-only "
            f"({res['images']} images from {res['unique_pngs']} PNGs "
            f"{res['png_size'][0]}x{res['png_size'][1]}, {res['workers']} workers)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "vitg"), default="tiny")
    ap.add_argument("--images", type=int, default=512, help="images end to end")
    ap.add_argument("--unique-images", type=int, default=None, help="distinct PNGs (cycled)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--amp-dtype", default="bfloat16", help="autocast dtype on CUDA")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bench = build_model(args.preset, device, args.seed)
    res = run_extraction_bench(
        bench,
        device,
        images=args.images,
        batch=args.batch,
        workers=args.workers,
        unique_images=args.unique_images,
        amp_dtype=args.amp_dtype,
        seed=args.seed,
    )
    res["torch_threads"] = torch.get_num_threads()
    print(format_report(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
