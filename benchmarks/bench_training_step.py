"""Benchmark one DQE-CIR training step: cached ViT tokens vs recomputing the frozen ViT.

Two ways to run the same optimisation step (same model, same batch, same process):

* **cached** (what ``model/train.py`` does): reference, target and negative images
  arrive as ViT token matrices; the step is the composed-query Q-Former pass on the
  reference tokens + text, the target and negative Q-Former passes, ``DQELoss``
  (pairwise KL + attribute margins), backward, gradient clipping and an AdamW step.
* **recompute** (what SPRC / QuRe do): the frozen ViT runs every step under no-grad on
  the reference, target and negative *pixels* (three forwards of B images), then the
  very same Q-Former step.

Each is measured twice:

* **bare step**: inputs already on the device (random tokens / random pixels);
* **end to end**: plus data loading. Cached: random rows gathered from an fp16 numpy
  memmap of N images, cast to fp32 and copied to the device (``model.data.load_tokens``).
  Recompute: N random PNG files decoded with PIL + ``ImagePreprocessor`` by a
  ``DataLoader`` (``--workers``). The end-to-end time is counted from the first batch
  request to the last optimiser step, so it includes the DataLoader start-up.

Text is pre-tokenised random ids (length ``--text-len``, no padding): tokenisation is
the same in both modes and left out.

Presets: ``tiny`` (``TinyBackboneSpec()`` defaults, random weights, 64 px) and ``vitg``
(full-size BLIP-2 ViT-g/14 + Q-Former, random weights, 224 px; 1B ViT parameters, so
meant for a GPU). bf16 autocast on CUDA; fp32 on CPU.

Usage::

    .venv/bin/python benchmarks/bench_training_step.py --preset tiny --batch 32 --steps 10
    .venv/bin/python benchmarks/bench_training_step.py --preset vitg --batch 128 --workers 12 \
        --device cuda --out gpu_train.json
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from transformers import (
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2QFormerConfig,
    Blip2VisionConfig,
)

from dqe_cir_pipeline.model.backbone import TinyBackboneSpec, encode_vit, tiny_blip2_config
from dqe_cir_pipeline.model.data import prefetched, to_device
from dqe_cir_pipeline.model.device import autocast, resolve_device
from dqe_cir_pipeline.model.dqe import DQECIR
from dqe_cir_pipeline.model.losses import DQELoss, EncodedBatch, LossConfig
from dqe_cir_pipeline.model.optim import build_optimizer
from dqe_cir_pipeline.model.preprocess import ImagePreprocessor
from dqe_cir_pipeline.model.train_config import OptimConfig

INIT_STD = 0.02  # the vision config's default (1e-10) gives near-constant features


# --------------------------------------------------------------------------- models
@dataclass
class BenchModel:
    """A randomly initialised BLIP-2 retrieval model plus the sizes the benchmarks need.

    Attributes:
        model: the HF model, vision encoder frozen and in eval mode, on the device.
        preset: "tiny" or "vitg".
        image_size: input side S.
        patch_size: ViT patch p.
        tokens: ViT tokens per image T = 1 + (S / p)^2.
        width: ViT width D.
        layers: ViT depth.
        mlp: ViT MLP width.
        vocab_size: Q-Former text vocabulary.
    """

    model: Blip2ForImageTextRetrieval
    preset: str
    image_size: int
    patch_size: int
    tokens: int
    width: int
    layers: int
    mlp: int
    vocab_size: int


def vitg_config(attn_implementation: str | None = "sdpa") -> Blip2Config:
    """Full-size BLIP-2 ViT-g/14 + Q-Former config (the ``blip2-itm-vit-g`` shapes).

    Args:
        attn_implementation: attention backend passed to the config ("sdpa"), or None.

    Returns:
        A ``Blip2Config`` built with the keyword-only transformers 5 constructors.
    """
    vision = Blip2VisionConfig(
        hidden_size=1408,
        intermediate_size=6144,
        num_hidden_layers=39,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        initializer_range=INIT_STD,
    )
    qformer = Blip2QFormerConfig(
        vocab_size=30523,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        cross_attention_frequency=2,
        encoder_hidden_size=1408,
        initializer_range=INIT_STD,
        use_qformer_text_input=True,
    )
    kwargs: dict[str, Any] = {
        "vision_config": vision.to_dict(),
        "qformer_config": qformer.to_dict(),
        "num_query_tokens": 32,
        "image_text_hidden_size": 256,
        "initializer_range": INIT_STD,
    }
    if attn_implementation:
        try:
            return Blip2Config(**kwargs, attn_implementation=attn_implementation)
        except TypeError:  # an older config class without the keyword: default backend
            pass
    return Blip2Config(**kwargs)


def build_model(
    preset: str, device: torch.device, seed: int = 0, attn_implementation: str | None = "sdpa"
) -> BenchModel:
    """Build a random-weight BLIP-2 retrieval model directly on ``device``.

    Args:
        preset: "tiny" (``TinyBackboneSpec()`` defaults) or "vitg" (full size).
        device: where the parameters are created (no 4 GB CPU detour for ViT-g).
        seed: torch seed for the initialisation.
        attn_implementation: attention backend ("sdpa") or None for the default.

    Returns:
        The model (vision encoder frozen, eval mode) and its sizes.
    """
    if preset == "tiny":
        config = tiny_blip2_config(TinyBackboneSpec())
        if attn_implementation:
            config._attn_implementation = attn_implementation
    elif preset == "vitg":
        config = vitg_config(attn_implementation)
    else:
        raise ValueError(f"preset must be 'tiny' or 'vitg', got {preset!r}")
    torch.manual_seed(seed)
    with device:  # parameters are allocated and initialised on the device
        model = Blip2ForImageTextRetrieval(config)
    with torch.no_grad():  # HF initialises the query tokens to zeros (all identical)
        model.query_tokens.normal_(0.0, INIT_STD)
    model.vision_model.requires_grad_(False)
    model.vision_model.eval()
    vc = config.vision_config
    return BenchModel(
        model=model,
        preset=preset,
        image_size=int(vc.image_size),
        patch_size=int(vc.patch_size),
        tokens=1 + (int(vc.image_size) // int(vc.patch_size)) ** 2,
        width=int(vc.hidden_size),
        layers=int(vc.num_hidden_layers),
        mlp=int(vc.intermediate_size),
        vocab_size=int(config.qformer_config.vocab_size),
    )


# --------------------------------------------------------------------------- data
def write_random_pngs(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """Write ``n`` random RGB PNGs of ``size`` (w, h) into ``folder``.

    The pictures are smooth colour fields (an 8x8 random grid, bicubic upsampled) plus
    +-8 grey-level noise: closer to photographs in PNG size and decode cost than pure
    noise (which barely compresses) or flat colour (which decodes for free).

    Returns:
        The file paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    paths = []
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        smooth = np.asarray(low.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = np.clip(smooth + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:06d}.png"
        Image.fromarray(noisy).save(path, compress_level=1)
        paths.append(str(path))
    return paths


def write_token_memmap(path: Path, n: int, tokens: int, width: int, seed: int = 0) -> np.memmap:
    """Write an fp16 ``(n, T, D)`` memmap of random ViT tokens (the feature-cache layout).

    Returns:
        The memmap, reopened read-only.
    """
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, tokens, width))
    rng = np.random.default_rng(seed)
    for i in range(0, n, 64):  # in blocks: bounded RAM for ViT-g sizes
        j = min(n, i + 64)
        mm[i:j] = rng.standard_normal((j - i, tokens, width), dtype=np.float32).astype(np.float16)
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


class _TripletPixels(Dataset):
    """Item k -> preprocessed (reference, target, negative) pixels of random PNG files."""

    def __init__(
        self, paths: Sequence[str], picks: np.ndarray, preprocess: ImagePreprocessor
    ) -> None:
        self.paths = list(paths)
        self.picks = picks  # (items, 3) file indices
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.picks)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = []
        for idx in self.picks[k]:
            with Image.open(self.paths[int(idx)]) as img:
                out.append(self.preprocess(img.convert("RGB")))
        return out[0], out[1], out[2]


class MemmapSource:
    """A ``FeatureSource`` over the fp16 memmap: ``get`` takes row numbers."""

    def __init__(self, mm: np.ndarray) -> None:
        self.mm = mm

    def get(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self.mm[np.sort(np.asarray(ids, dtype=np.int64))])


def load_cached_tokens(mm: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Gather rows of the fp16 memmap, cast to fp32 on the host and copy to ``device``:
    the trainer's loading before it prefetched (kept as the baseline of the same run)."""
    arr = np.asarray(mm[np.sort(idx)]).astype(np.float32)
    return torch.from_numpy(arr).to(device, non_blocking=True)


# --------------------------------------------------------------------------- step
def sync(device: torch.device) -> None:
    """Wait for queued device work (timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stepper:
    """The trainer's optimisation step on a ``DQECIR`` built from a benchmark model.

    Args:
        bench: the benchmark model (its Q-Former is trained in place).
        device: compute device.
        amp_dtype: autocast dtype on CUDA ("bfloat16"); ignored on CPU.
        text_len: length of the random token ids.
        batch: triplets per step.
        seed: RNG seed of the random text / edit flags.
    """

    def __init__(
        self,
        bench: BenchModel,
        device: torch.device,
        amp_dtype: str,
        text_len: int,
        batch: int,
        seed: int = 0,
    ) -> None:
        self.bench = bench
        self.device = device
        self.amp = amp_dtype
        self.dqe = DQECIR(bench.model).to(device).train()
        self.loss_fn = DQELoss(LossConfig(objective="pairwise_kl"))
        self.optimizer = build_optimizer(self.dqe, OptimConfig(lr=1e-5))
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, bench.vocab_size, (batch, text_len), generator=g)
        ids[:, 0] = 2  # [CLS]
        self.ids = ids.to(device)
        self.mask = torch.ones_like(self.ids)
        self.color = (torch.rand(batch, generator=g) < 0.5).to(device)
        self.shape = (torch.rand(batch, generator=g) < 0.5).to(device)
        self.last_loss: torch.Tensor | None = None

    def vit(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen ViT forward (no grad) on (B, 3, S, S) pixels -> (B, T, D) tokens."""
        with autocast(self.device, self.amp):
            return encode_vit(self.bench.model, pixels.to(self.device, non_blocking=True))

    def step(self, ref: torch.Tensor, tgt: torch.Tensor, neg: torch.Tensor) -> None:
        """One Q-Former optimisation step on (B, T, D) reference / target / negative tokens."""
        with autocast(self.device, self.amp):
            out = self.dqe.encode_queries(ref, self.ids, self.mask)
            tgt_emb = self.dqe.encode_targets(tgt)
            neg_emb = self.dqe.encode_targets(neg)
            batch = EncodedBatch(out, tgt_emb, self.color, self.shape, negatives=neg_emb)
            terms = self.loss_fn(self.dqe, batch)
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.dqe.parameters(), 1.0)
        self.optimizer.step()
        self.last_loss = terms.loss.detach()

    def step_from_pixels(self, ref: torch.Tensor, tgt: torch.Tensor, neg: torch.Tensor) -> None:
        """SPRC / QuRe: three frozen-ViT forwards, then the same Q-Former step."""
        self.step(self.vit(ref), self.vit(tgt), self.vit(neg))


def _timed(fn: Any, n: int, device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return time.perf_counter() - t0


def run_training_bench(
    bench: BenchModel,
    device: torch.device,
    *,
    batch: int,
    steps: int,
    warmup: int,
    images: int,
    workers: int,
    e2e_steps: int | None = None,
    text_len: int = 24,
    amp_dtype: str = "bfloat16",
    png_size: tuple[int, int] | None = None,
    end_to_end: bool = True,
    tmp_root: str | None = None,
    seed: int = 0,
    into: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure bare and end-to-end triplets/s of the cached and the recompute step.

    Args:
        bench: the model (shared by both modes; the Q-Former keeps training across them,
            which does not change the cost of a step).
        device: compute device.
        batch: triplets per step B.
        steps: timed bare steps per mode.
        warmup: untimed steps per mode before timing.
        images: N distinct images in the memmap / PNG folder.
        workers: DataLoader workers decoding PNGs (recompute end to end).
        e2e_steps: steps per mode end to end (default ``steps``).
        text_len: token ids per modification text.
        amp_dtype: autocast dtype on CUDA.
        png_size: (w, h) of the generated PNGs (default: 1.25 S x S, so the
            target-pad + resize path of the preprocessor runs).
        end_to_end: also run the data-loading variants.
        tmp_root: parent folder of the temporary files.
        seed: RNG seed.
        into: dict filled in place as figures arrive (a caller that aborts the run,
            e.g. on a time box, keeps the figures measured so far).

    Returns:
        Flat dict of figures (triplets/s, seconds per step, ratios, settings).
    """
    stepper = Stepper(bench, device, amp_dtype, text_len, batch, seed)
    t, d, s = bench.tokens, bench.width, bench.image_size
    g = torch.Generator(device="cpu").manual_seed(seed)
    tokens = [torch.randn(batch, t, d, generator=g).to(device) for _ in range(3)]
    pixels = [torch.randn(batch, 3, s, s, generator=g).to(device) for _ in range(3)]
    res = into if into is not None else {}
    res.update(
        preset=bench.preset,
        device=str(device),
        batch=batch,
        steps=steps,
        warmup=warmup,
        amp_dtype=amp_dtype if device.type == "cuda" else "float32",
        vit_tokens=t,
        vit_width=d,
        image_size=s,
        trainable_params=sum(p.numel() for p in stepper.dqe.trainable_parameters()),
    )
    _bare_rates(stepper, tokens, pixels, steps=steps, warmup=warmup, into=res)
    if not end_to_end:
        return res

    n_e2e = e2e_steps or steps
    with tempfile.TemporaryDirectory(prefix="bench_train_", dir=tmp_root) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        mm = write_token_memmap(root / "tokens.npy", images, t, d, seed)
        res["setup_memmap_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        w, h = png_size or (int(round(1.25 * s)), s)
        paths = write_random_pngs(root / "png", images, (w, h), seed)
        res["setup_png_s"] = time.perf_counter() - t0
        res.update({"images": images, "workers": workers, "png_size": [w, h], "e2e_steps": n_e2e})
        _end_to_end_rates(stepper, mm, paths, n_e2e, warmup, workers, seed, into=res)
        del mm
    return res


def _bare_rates(
    stepper: Stepper,
    tokens: list[torch.Tensor],
    pixels: list[torch.Tensor],
    *,
    steps: int,
    warmup: int,
    into: dict[str, Any],
) -> None:
    """Triplets/s of the cached and the recompute step on inputs already on the device."""
    device, batch, res = stepper.device, len(tokens[0]), into

    def cached() -> None:
        stepper.step(*tokens)

    def recompute() -> None:
        stepper.step_from_pixels(*pixels)

    for name, fn in (("cached", cached), ("recompute", recompute)):
        _timed(fn, warmup, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sec = _timed(fn, steps, device)
        res[f"bare_{name}_triplets_per_s"] = batch * steps / sec
        res[f"bare_{name}_s_per_step"] = sec / steps
        if device.type == "cuda":
            res[f"bare_{name}_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    res["bare_speedup_cached_over_recompute"] = (
        res["bare_cached_triplets_per_s"] / res["bare_recompute_triplets_per_s"]
    )
    loss = stepper.last_loss
    res["last_loss_finite"] = bool(loss is not None and math.isfinite(float(loss)))


def _end_to_end_rates(
    stepper: Stepper,
    mm: np.ndarray,
    paths: list[str],
    n_e2e: int,
    warmup: int,
    workers: int,
    seed: int,
    *,
    into: dict[str, Any],
) -> None:
    """Triplets/s with data loading: memmap gathers (in the loop, then prefetched), and
    PNG decoding in DataLoader workers."""
    device, batch, res, images = stepper.device, len(stepper.ids), into, len(mm)
    rng = np.random.default_rng(seed)
    # cached: gather from the memmap in the training loop (model.data.load_tokens)
    for _ in range(max(1, warmup)):  # touch the pages: the cache is warm in practice
        stepper.step(
            *(load_cached_tokens(mm, rng.integers(0, images, batch), device) for _ in range(3))
        )
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n_e2e):
        ref, tgt, neg = (
            load_cached_tokens(mm, rng.integers(0, images, batch), device) for _ in range(3)
        )
        stepper.step(ref, tgt, neg)
    sync(device)
    sec = time.perf_counter() - t0
    res["e2e_cached_triplets_per_s"] = batch * n_e2e / sec

    # cached as the trainer trains now: next step's gather on a worker thread, fp16
    # (pinned on CUDA) to the device, cast there
    source = MemmapSource(mm)
    plan = [[rng.integers(0, images, batch) for _ in range(3)] for _ in range(n_e2e)]
    sync(device)
    t0 = time.perf_counter()
    for host in prefetched(source, plan, pin=device.type == "cuda"):
        stepper.step(*(to_device(h, device) for h in host))
    sync(device)
    sec = time.perf_counter() - t0
    res["e2e_cached_prefetch_triplets_per_s"] = batch * n_e2e / sec
    res["e2e_prefetch_speedup"] = (
        res["e2e_cached_prefetch_triplets_per_s"] / res["e2e_cached_triplets_per_s"]
    )

    # recompute: decode + preprocess PNGs in DataLoader workers, ViT every step
    picks = rng.integers(0, images, (batch * n_e2e, 3))
    loader = DataLoader(
        _TripletPixels(paths, picks, ImagePreprocessor(stepper.bench.image_size)),
        batch_size=batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    sync(device)
    t0 = time.perf_counter()
    it: Iterator[Any] = iter(loader)
    for ref_px, tgt_px, neg_px in it:
        stepper.step_from_pixels(ref_px, tgt_px, neg_px)
    sync(device)
    sec = time.perf_counter() - t0
    res["e2e_recompute_triplets_per_s"] = batch * n_e2e / sec
    res["e2e_speedup_cached_over_recompute"] = (
        res["e2e_cached_triplets_per_s"] / res["e2e_recompute_triplets_per_s"]
    )


def format_report(res: dict[str, Any]) -> str:
    """Human-readable lines of the figures."""
    lines = [
        f"preset {res['preset']} on {res['device']} ({res['amp_dtype']}), batch {res['batch']}, "
        f"ViT tokens {res['vit_tokens']}x{res['vit_width']}, "
        f"{res['trainable_params'] / 1e6:.1f}M trainable params",
        f"  bare step   cached    {res['bare_cached_triplets_per_s']:10.1f} triplets/s "
        f"({1e3 * res['bare_cached_s_per_step']:.1f} ms/step)",
        f"  bare step   recompute {res['bare_recompute_triplets_per_s']:10.1f} triplets/s "
        f"({1e3 * res['bare_recompute_s_per_step']:.1f} ms/step)",
        f"  bare step   cached / recompute = {res['bare_speedup_cached_over_recompute']:.2f}x",
    ]
    if "e2e_cached_triplets_per_s" in res:
        lines += [
            f"  end to end  cached    {res['e2e_cached_triplets_per_s']:10.1f} triplets/s "
            f"(fp16 memmap of {res['images']} images, gathered in the loop, fp32 cast on the host)",
            "  end to end  cached, prefetched "
            f"{res['e2e_cached_prefetch_triplets_per_s']:10.1f} triplets/s "
            f"(the trainer: one batch ahead on a thread, fp16 to the device) = "
            f"{res['e2e_prefetch_speedup']:.2f}x",
            f"  end to end  recompute {res['e2e_recompute_triplets_per_s']:10.1f} triplets/s "
            f"({res['images']} PNGs {res['png_size'][0]}x{res['png_size'][1]}, "
            f"{res['workers']} workers)",
            f"  end to end  cached / recompute = {res['e2e_speedup_cached_over_recompute']:.2f}x",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "vitg"), default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per mode")
    ap.add_argument(
        "--e2e-steps", type=int, default=None, help="end-to-end steps (default --steps)"
    )
    ap.add_argument("--images", type=int, default=256, help="distinct images (memmap rows / PNGs)")
    ap.add_argument("--workers", type=int, default=0, help="PNG decode DataLoader workers")
    ap.add_argument("--text-len", type=int, default=24)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--amp-dtype", default="bfloat16", help="autocast dtype on CUDA")
    ap.add_argument("--no-e2e", action="store_true", help="bare steps only")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    bench = build_model(args.preset, device, args.seed)
    res = run_training_bench(
        bench,
        device,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        images=args.images,
        workers=args.workers,
        e2e_steps=args.e2e_steps,
        text_len=args.text_len,
        amp_dtype=args.amp_dtype,
        end_to_end=not args.no_e2e,
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
