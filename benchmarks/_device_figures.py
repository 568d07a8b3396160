"""The device figures of ``gpu_report.py device``: every GPU rate and memory figure at once.

Sections, each in its own SIGALRM time box (clipped to a global budget) and its own
try/except, so a failure is recorded and the figures measured before it are kept:

a. bf16 matmul peak (8192^3 on CUDA: 3 warm-ups, mean of 10).
b. ViT-g/14 feature extraction (random weights, SDPA attention, bf16 autocast):
   model-only at batch 256 and end to end (generated PNGs, DataLoader workers,
   ``VitEncoder``, fp16 memmap), MFU of both against (a) (``bench_extraction.py``).
c. The training step at batch 128, full size, bf16: cached ViT tokens vs recomputing the
   frozen ViT, bare and end to end (``bench_training_step.py``).
d. ``mine_negatives`` on 20k queries x 20k pool x 32 tokens x 256 dims (wall time with
   the host -> device transfer, peak CUDA memory) and ``target_ranks`` at 6k x 6k.

They run in the order a, d, b, c (the cheap, model-free sections first, so a slow model
build cannot starve them) and are tabled in a-d order. Only torch, transformers, numpy,
PIL and ``dqe_cir_pipeline.model`` are imported (no Kedro, no MLflow: they run before
the project is installed). ``tiny=True`` shrinks every size so the run takes well under
a minute on a CPU.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_extraction import matmul_peak, run_extraction_bench
from bench_training_step import BenchModel, build_model, run_training_bench

from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives
from dqe_cir_pipeline.model.retrieval import target_ranks


class SectionTimeout(Exception):
    """Raised by SIGALRM when a section exceeds its time box."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise SectionTimeout("section time box exceeded")


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _sizes(tiny: bool, device: torch.device) -> dict[str, Any]:
    """All sizes of the run: full GPU sizes, or tiny ones (a CPU check)."""
    workers = max(1, min(12, (os.cpu_count() or 2) - 2))
    if tiny:
        return {
            "preset": "tiny",
            "matmul_n": 512,
            "workers": 1,
            "extract": {"batch": 32, "images": 96, "unique_images": 48, "model_batches": 3},
            "train": {"batch": 8, "steps": 2, "warmup": 1, "images": 32, "e2e_steps": 2},
            "mining": (1000, 1000, 16, 64),
            "ranks": (600, 600, 16, 64),
        }
    return {
        "preset": "vitg",
        "matmul_n": 8192,
        "workers": workers,
        "extract": {"batch": 256, "images": 2048, "unique_images": 384, "model_batches": 10},
        "train": {"batch": 128, "steps": 5, "warmup": 2, "images": 384, "e2e_steps": 6},
        "mining": (20000, 20000, 32, 256),
        "ranks": (6000, 6000, 32, 256),
    }


def _normalised(shape: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=gen), dim=-1)


def bench_mining(
    device: torch.device,
    mining: Sequence[int],
    ranks: Sequence[int],
    into: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mining + target ranks on random normalised embeddings created on the host.

    Args:
        device: compute device (bf16 matmuls on CUDA, fp32 on CPU).
        mining: (N queries, M pool, Q tokens, P dims) of ``mine_negatives``.
        ranks: (N, M, Q, P) of ``target_ranks``.
        into: dict filled in place (partial figures survive an abort).

    Wall times include the host -> device transfer of queries and pool / gallery.
    """
    n, m, q, p = mining
    gen = torch.Generator().manual_seed(0)
    amp = torch.bfloat16 if device.type == "cuda" else None
    res = into if into is not None else {}
    res["mining_shape"] = f"{n}x{m}x{q}x{p}"
    queries, pool = _normalised((n, p), gen), _normalised((m, q, p), gen)
    target = torch.randint(0, m, (n,), generator=gen)
    reference = (target + 1 + torch.randint(0, m - 1, (n,), generator=gen)) % m
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    result = mine_negatives(
        queries, pool, target, reference, MiningConfig(), device=device, amp_dtype=amp
    )
    res["mining_s"] = time.perf_counter() - t0  # returns numpy on the host: synchronised
    res["mining_queries_per_s"] = n / res["mining_s"]
    res["mining_stored_mean"] = float(result.n_stored.mean())
    if device.type == "cuda":
        res["mining_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    del queries, pool, result
    _free(device)

    n2, m2, q2, p2 = ranks
    res["ranks_shape"] = f"{n2}x{m2}x{q2}x{p2}"
    queries, gallery = _normalised((n2, p2), gen), _normalised((m2, q2, p2), gen)
    target = torch.randint(0, m2, (n2,), generator=gen)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    ranks = target_ranks(queries, gallery, target, device=device, amp_dtype=amp)
    res["ranks_s"] = time.perf_counter() - t0
    res["ranks_median"] = float(ranks.float().median())
    if device.type == "cuda":
        res["ranks_peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return res


class Runner:
    """Runs sections under a global budget, each with its own time box."""

    def __init__(self, budget_s: float) -> None:
        self.start = time.perf_counter()
        self.budget = budget_s
        self.results: dict[str, dict[str, Any]] = {}

    def remaining(self) -> float:
        """Seconds left of the global budget."""
        return self.budget - (time.perf_counter() - self.start)

    def run(
        self,
        name: str,
        limit_s: float,
        fn: Callable[[dict[str, Any]], dict[str, Any]],
        device: torch.device,
    ) -> None:
        """Run ``fn(partial)`` within ``min(limit_s, remaining)`` seconds.

        ``fn`` fills ``partial`` as it goes, so figures measured before a failure or a
        time-out are kept next to the error.
        """
        box = int(min(limit_s, self.remaining()))
        if box < 5:
            self.results[name] = {"status": "skipped", "error": "global budget spent"}
            print(f"[{name}] skipped: global budget spent", flush=True)
            return
        print(f"[{name}] start (time box {box}s)", flush=True)
        t0 = time.perf_counter()
        signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(box)
        partial: dict[str, Any] = {}
        try:
            out = fn(partial)
            status = {"status": "ok"}
        except BaseException as err:  # noqa: BLE001 - report everything, keep going
            if isinstance(err, KeyboardInterrupt):
                raise
            out = partial
            status = {
                "status": "timeout" if isinstance(err, SectionTimeout) else "error",
                "error": f"{type(err).__name__}: {err}"[:500],
            }
            traceback.print_exc()
        finally:
            signal.alarm(0)
        out.update(status)
        out["section_s"] = time.perf_counter() - t0
        self.results[name] = out
        print(f"[{name}] {out['status']} in {out['section_s']:.1f}s", flush=True)
        _free(device)


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3g}{unit}" if abs(v) < 100 else f"{v:,.1f}{unit}"
    return f"{v}{unit}"


def summary_table(results: dict[str, dict[str, Any]]) -> str:
    """One table: section, figure, value."""
    rows: list[tuple[str, str, str]] = []

    def add(sec: str, label: str, key: str, unit: str = "", scale: float = 1.0) -> None:
        r = results.get(sec, {})
        v = r.get(key)
        rows.append((sec, label, _fmt(v * scale if isinstance(v, (int, float)) else v, unit)))

    for sec in ("a_matmul_peak", "b_extraction", "c_training_step", "d_mining"):
        r = results.get(sec, {})
        rows.append(
            (sec, "status", f"{r.get('status', 'not run')} ({_fmt(r.get('section_s'), 's')})")
        )
        if r.get("error"):
            rows.append((sec, "error", r["error"][:90]))
    add("a_matmul_peak", "peak", "peak_tflops", " TFLOP/s")
    add("b_extraction", "GFLOP / image", "gflop_per_image")
    add("b_extraction", "model-only", "model_only_images_per_s", " img/s")
    add("b_extraction", "model-only MFU", "model_only_mfu", " %", 100)
    add("b_extraction", "end to end", "e2e_images_per_s", " img/s")
    add("b_extraction", "end-to-end MFU", "e2e_mfu", " %", 100)
    add("b_extraction", "e2e % of model-only", "e2e_pct_of_model_only", " %")
    add("c_training_step", "bare cached", "bare_cached_triplets_per_s", " trip/s")
    add("c_training_step", "bare recompute", "bare_recompute_triplets_per_s", " trip/s")
    add("c_training_step", "bare cached/recompute", "bare_speedup_cached_over_recompute", "x")
    add("c_training_step", "e2e cached", "e2e_cached_triplets_per_s", " trip/s")
    add(
        "c_training_step", "e2e cached, prefetched", "e2e_cached_prefetch_triplets_per_s", " trip/s"
    )
    add("c_training_step", "e2e recompute", "e2e_recompute_triplets_per_s", " trip/s")
    add("c_training_step", "e2e cached/recompute", "e2e_speedup_cached_over_recompute", "x")
    add("c_training_step", "peak mem recompute", "bare_recompute_peak_mem_gib", " GiB")
    add("d_mining", "mining shape", "mining_shape")
    add("d_mining", "mining wall", "mining_s", " s")
    add("d_mining", "mining peak mem", "mining_peak_mem_gib", " GiB")
    add("d_mining", "target_ranks shape", "ranks_shape")
    add("d_mining", "target_ranks wall", "ranks_s", " s")
    order = {"a": 0, "b": 1, "c": 2, "d": 3}
    rows.sort(key=lambda r: order[r[0][0]])  # stable: keeps the figure order per section
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{'section':<{w0}}  {'figure':<{w1}}  value", "-" * (w0 + w1 + 30)]
    lines += [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def environment(device: torch.device, tiny: bool, workers: int) -> dict[str, Any]:
    """The run's device, versions and settings (the JSON's ``env``)."""
    env: dict[str, Any] = {
        "device": str(device),
        "tiny": tiny,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "workers": workers,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def run_sections(
    runner: Runner, device: torch.device, sizes: dict[str, Any], workers: int, tiny: bool
) -> None:
    """Sections a, d, b, c through ``runner`` (the model is built once, on first need)."""
    peak: dict[str, Any] = {}
    model: list[BenchModel] = []

    def get_model() -> BenchModel:
        if not model:
            t0 = time.perf_counter()
            model.append(build_model(sizes["preset"], device, seed=0))
            print(f"built {sizes['preset']} model in {time.perf_counter() - t0:.1f}s", flush=True)
        return model[0]

    def sec_a(partial: dict[str, Any]) -> dict[str, Any]:
        peak.update(matmul_peak(device, n=sizes["matmul_n"]))
        partial.update(peak)
        return partial

    def sec_b(partial: dict[str, Any]) -> dict[str, Any]:
        e = sizes["extract"]
        return run_extraction_bench(
            get_model(),
            device,
            images=e["images"],
            batch=e["batch"],
            workers=workers,
            unique_images=e["unique_images"],
            model_batches=e["model_batches"],
            peak=peak or None,
            png_size=(280, 224) if not tiny else None,
            into=partial,
        )

    def sec_c(partial: dict[str, Any]) -> dict[str, Any]:
        t = sizes["train"]
        return run_training_bench(
            get_model(),
            device,
            batch=t["batch"],
            steps=t["steps"],
            warmup=t["warmup"],
            images=t["images"],
            workers=workers,
            e2e_steps=t["e2e_steps"],
            into=partial,
        )

    def sec_d(partial: dict[str, Any]) -> dict[str, Any]:
        return bench_mining(device, sizes["mining"], sizes["ranks"], into=partial)

    runner.run("a_matmul_peak", 40, sec_a, device)
    runner.run("d_mining", 70, sec_d, device)
    runner.run("b_extraction", 120, sec_b, device)
    runner.run("c_training_step", 150, sec_c, device)


def device_figures(
    *, tiny: bool, device: str, budget_s: float, workers: int | None, out: Path | None
) -> dict[str, Any]:
    """Run every section, print the table and (with ``out``) write the JSON.

    Args:
        tiny: tiny sizes (a CPU check of the plumbing; its figures mean nothing).
        device: ``auto``, ``cpu`` or ``cuda``.
        budget_s: global seconds for all sections.
        workers: DataLoader decode workers (default: the size preset's).
        out: where the figures go as JSON.

    Returns:
        ``env``, ``sections`` (per section: its figures, ``status`` and seconds),
        ``total_s`` and ``kedro_or_mlflow_imported`` (must be empty).
    """
    dev = resolve_device(device)
    sizes = _sizes(tiny, dev)
    n_workers = workers if workers is not None else sizes["workers"]
    env = environment(dev, tiny, n_workers)
    print(json.dumps(env), flush=True)
    runner = Runner(budget_s)
    run_sections(runner, dev, sizes, n_workers, tiny)
    forbidden = sorted(m for m in sys.modules if m.split(".")[0] in ("kedro", "mlflow"))
    result = {
        "env": env,
        "sections": runner.results,
        "total_s": time.perf_counter() - runner.start,
        "kedro_or_mlflow_imported": forbidden,
    }
    print()
    print(summary_table(runner.results))
    print(f"total {result['total_s']:.1f}s; kedro/mlflow modules imported: {forbidden or 'none'}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {out}")
    return result
