"""The real-data smoke run of ``gpu_report.py smoke``: every stage through Kedro at full size.

Per benchmark (CIRR, FashionIQ), through the project's own ``kedro run --env
<benchmark> --pipelines train`` (catalog, feature cache, kedro-mlflow, the nodes a real
run uses):

1. a placeholder data tree with the real annotation layout and (``scale=1``) the real
   val/test sizes, small generated images (``data_sources/placeholder.py``);
2. ingestion, ViT feature extraction, initial negative mining, a short training run
   (``epochs``, with a negative refresh) and evaluation with the benchmark's protocol;
3. on a BLIP-2 with the ``blip2-itm-vit-g`` shapes (ViT-g/14 at 224 px, 32 query tokens,
   12-layer Q-Former) and random weights, built once into ``<work>/backbone-full``
   (``size="full"``, 4.4 GB), bf16 autocast on CUDA; ``size="tiny"`` runs on a CPU.

It prints one table per benchmark (seconds to run and to save each node, the feature
cache computing the ViT features as it is saved; peak GPU memory and RSS per node;
extraction images/s, training triplets/s, evaluation queries/s, the recall, at chance
level on placeholders) and writes everything to ``<work>/smoke_report.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields
from typing import Any

from _kedro_run import Workspace, latest_run, node_resources, run_kedro

from dqe_cir_pipeline.data_sources.placeholder import PlaceholderConfig, write_benchmark
from dqe_cir_pipeline.io_utils import atomic_write_json
from dqe_cir_pipeline.launch import peak_rss_bytes
from dqe_cir_pipeline.model.backbone import TinyBackboneSpec

#: ``Salesforce/blip2-itm-vit-g`` shapes: EVA ViT-g/14 (39 layers, 1408 wide) and the
#: 12-layer BERT-base Q-Former with cross-attention every second layer.
FULL_SIZE = TinyBackboneSpec(
    image_size=224,
    patch_size=14,
    vision_hidden=1408,
    vision_layers=39,
    vision_heads=16,
    vision_mlp=6144,
    qformer_hidden=768,
    qformer_layers=12,
    qformer_heads=12,
    qformer_mlp=3072,
    cross_attention_frequency=2,
    num_query_tokens=32,
    projection_dim=256,
    max_position_embeddings=32,
    vocab_size=30523,
)
SIZES = {"full": FULL_SIZE, "tiny": TinyBackboneSpec()}


def kedro_params(args: argparse.Namespace, ws: Workspace, benchmark: str) -> dict[str, Any]:
    """Parameters on top of ``conf/<benchmark>``: the work folder's data, a random
    backbone, short training."""
    spec = SIZES[args.size]
    return {
        **ws.data_params(benchmark),
        "backbone.source": "tiny",
        "backbone.tiny_dir": str(ws.work / f"backbone-{args.size}"),
        **{f"backbone.tiny.{f.name}": getattr(spec, f.name) for f in fields(spec)},
        "runtime.device": args.device,
        "extraction.batch_size": args.extraction_batch,
        "extraction.num_workers": args.workers,
        "training.loop.epochs": args.epochs,
        "training.loop.batch_size": args.batch_size,
        "training.loop.refresh_interval": 1,
        "training.optim.warmup_steps": 10,
        "training.loop.run_dir": str(ws.work / "runs"),
        "training.loop.resume": False,
        "evaluation.qualitative_queries": 2,
    }


def collect(benchmark: str, ws: Workspace) -> dict[str, Any]:
    """Throughput, memory and metrics of the latest run of ``benchmark``."""
    import pandas as pd

    bench = ws.data_root / benchmark
    run_id, metrics = latest_run(ws, benchmark)
    nodes = node_resources(metrics)
    extraction = json.loads((bench / "08_reporting/extraction_report.json").read_text())[
        "last_save"
    ]
    history = pd.read_parquet(bench / "07_model_output/training_history.parquet")
    evaluation = json.loads((bench / "08_reporting/evaluation.json").read_text())
    eval_seconds = nodes.get("evaluation.evaluate_checkpoint", {}).get("seconds", float("nan"))
    return {
        "run_id": run_id,
        "nodes": nodes,
        "extraction": {
            "images": extraction["computed"],
            "encode_seconds": extraction["encode_seconds"],
            "images_per_s": extraction["computed"] / max(extraction["encode_seconds"], 1e-9),
        },
        "training": {
            "epochs": len(history),
            "triplets_per_s_last_epoch": float(history["train/triplets_per_s"].iloc[-1]),
            "mining_seconds": [float(x) for x in history["train/mining_seconds"]],
            "loss": [float(x) for x in history["train/loss"]],
        },
        "evaluation": {
            "queries": evaluation["queries"],
            "gallery": evaluation["gallery"],
            "queries_per_s": evaluation["queries"] / eval_seconds
            if eval_seconds == eval_seconds
            else None,
            "metrics": {
                k: v
                for k, v in evaluation["models"]["dqe_cir"].items()
                if isinstance(v, (int, float))
            },
        },
    }


def table(benchmark: str, rep: dict[str, Any]) -> str:
    lines = [
        f"== {benchmark}: {rep['kedro_seconds']:.0f} s for kedro run (data written in "
        f"{rep['data_seconds']:.0f} s)"
    ]
    lines.append(
        f"   {'node':<30}{'run s':>8}{'save s':>8}{'peak GPU GiB':>14}{'peak RSS GiB':>14}"
    )
    for name, v in rep["nodes"].items():
        gpu, save = v.get("peak_gpu_gib"), v.get("save_seconds")
        lines.append(
            "   "
            f"{name:<30}{v.get('seconds', float('nan')):>8.1f}{(f'{save:.1f}' if save else '-'):>8}"
            f"{(f'{gpu:.2f}' if gpu is not None else '-'):>14}"
            f"{v.get('peak_rss_gib', float('nan')):>14.2f}"
        )
    ex, tr, ev = rep["extraction"], rep["training"], rep["evaluation"]
    lines.append(
        f"   extraction: {ex['images']} images, {ex['images_per_s']:.1f} images/s (encode "
        "loop, decode included)"
    )
    lines.append(
        f"   training:   {tr['epochs']} epochs, {tr['triplets_per_s_last_epoch']:.1f} "
        f"triplets/s, loss {tr['loss']}"
    )
    qps = ev["queries_per_s"]
    lines.append(
        f"   evaluation: {ev['queries']} queries x {ev['gallery']} gallery, "
        f"{(f'{qps:.1f}' if qps else '?')} queries/s (node, incl. plots and baselines)"
    )
    shown = {k: round(v, 2) for k, v in ev["metrics"].items() if "recall" in k or k == "avg"}
    lines.append(f"   recall on placeholders (chance level expected): {shown}")
    return "\n".join(lines)


def run_smoke(args: argparse.Namespace) -> dict[str, Any]:
    """The smoke run: ``args`` as ``gpu_report.py smoke`` parses them.

    Returns:
        The report written to ``<work>/smoke_report.json``: per benchmark its placeholder
        counts, seconds, per-node resources and the extraction, training and evaluation
        figures; the peak RSS of a ``kedro run``; the CUDA device's name.
    """
    ws = Workspace(args.work.resolve())
    cfg = PlaceholderConfig(
        scale=args.scale,
        train_queries=args.train_queries,
        image_size=args.image_size,
        workers=args.workers,
    )
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "placeholder": asdict(cfg),
        "benchmarks": {},
    }
    for benchmark in args.benchmarks:
        t0 = time.perf_counter()
        counts = write_benchmark(benchmark, ws.raw(benchmark), cfg)
        data_seconds = time.perf_counter() - t0
        run = run_kedro(
            ws, benchmark, "train", kedro_params(args, ws, benchmark), ws.work / f"{benchmark}.log"
        )
        rep = {
            "data": counts,
            "data_seconds": data_seconds,
            "kedro_seconds": run.seconds,
            **collect(benchmark, ws),
        }
        report["benchmarks"][benchmark] = rep
        print(table(benchmark, rep), flush=True)
    report["max_child_rss_gib"] = peak_rss_bytes(children=True) / 2**30
    import torch

    if torch.cuda.is_available():
        report["device"] = torch.cuda.get_device_name(0)
    out = ws.work / "smoke_report.json"
    atomic_write_json(out, report, sort_keys=False)
    print(f"peak host RSS of a kedro run: {report['max_child_rss_gib']:.2f} GiB; report: {out}")
    return report
