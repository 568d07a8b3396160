"""Gallery index: exact vs FAISS-approximate search (recall@50, latency), end-to-end query
latency of the trained model, and the registered model's fresh-process load.

Three parts, each printed as a table (``--out`` also writes the figures as JSON):

1. **Synthetic galleries** at 10k, the FashionIQ-val sizes (6,346 images: the largest
   category; 15,536: all three) and 100k images, with the tiny backbone's shape
   (Q=16 tokens x P=64) and BLIP-2's (Q=32 x P=256). Embeddings are clustered (50
   clusters, tokens around a per-image centre), queries are noisy copies of gallery
   tokens. For each size: exact max-over-tokens search (one query at a time, warm), the
   approximate index (FAISS IVF + exact re-ranking of its candidates; build time),
   recall of its top-50 against exact top-50, and the speedup.
2. **The trained model on the default test gallery** (``--data-root``: a data root a
   ``kedro run`` wrote): warm one-query latency of the whole query (decode the reference
   PNG, frozen ViT, Q-Former, exact search), and its parts.
3. **The registered MLflow model** (``--registered-model``): load + first answer of its
   input example in a fresh process (``mlflow.pyfunc.load_model``).

Usage::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_gallery_index.py \\
        --data-root /tmp/h14/data --registered-model models:/dqe_cir_synthetic/latest
    PYTHONPATH=src .venv/bin/python benchmarks/bench_gallery_index.py --sizes 10000 --shapes 16x64
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.serving import GalleryIndex, IndexSettings, QueryModel, Searcher
from dqe_cir_pipeline.serving.images import load_image_file
from dqe_cir_pipeline.serving.index import TokenANN

FASHIONIQ_SIZES = (6346, 15536)


def clustered_gallery(m: int, q: int, p: int, seed: int = 0) -> torch.Tensor:
    """(m, q, p) unit token embeddings: per-image centres from 50 clusters, tokens around them."""
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(m, q, p)
    clusters = torch.randn(50, p, generator=g)
    for start in range(0, m, 10000):  # in blocks: the noise tensor of 100k x 32 x 256 is 3 GB
        n = min(10000, m - start)
        centres = clusters[torch.randint(0, 50, (n,), generator=g)]
        centres = centres + 0.7 * torch.randn(n, p, generator=g)
        out[start : start + n] = centres[:, None] + 0.5 * torch.randn(n, q, p, generator=g)
    return F.normalize(out, dim=-1)


def synthetic_index(emb: torch.Tensor, settings: IndexSettings) -> tuple[GalleryIndex, float]:
    """An index over ``emb`` with an approximate part; returns it and the FAISS build seconds."""
    m = emb.shape[0]
    table = pd.DataFrame(
        {
            "image_id": [str(i) for i in range(m)],
            "path": [""] * m,
            "content_hash": [str(i) for i in range(m)],
            "category": [""] * m,
        }
    )
    t0 = time.perf_counter()
    ann = TokenANN.build(emb.numpy(), settings.ann_encoding, settings.ann_nlist)
    build = time.perf_counter() - t0
    meta = {"format": 1, "key": "bench", "model_version": "bench", "backbone_key": "bench"}
    return GalleryIndex(emb, table, meta, ann, settings), build


def timed(fn: Any, repeats: int) -> tuple[float, Any]:
    """Median milliseconds of ``repeats`` calls (after one warm-up) and the last result."""
    out = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), out


def compare_one_by_one(
    index: GalleryIndex, queries: torch.Tensor
) -> tuple[list[float], list[float], list[float]]:
    """Per query (one at a time, warm): exact ms, approximate ms, recall of approx top-50."""
    exact_ms, approx_ms, recalls = [], [], []
    for n in range(queries.shape[0]):
        qn = queries[n : n + 1]
        t_e, exact = timed(lambda qn=qn: index.search(qn, 50, approximate=False), 2)
        t_a, approx = timed(lambda qn=qn: index.search(qn, 50, approximate=True), 2)
        exact_ms.append(t_e)
        approx_ms.append(t_a)
        recalls.append(len(set(exact["image_id"]) & set(approx["image_id"])) / 50)
    return exact_ms, approx_ms, recalls


def bench_synthetic(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for shape in args.shapes:
        q_tok, dim = (int(x) for x in shape.split("x"))
        for size in args.sizes:
            emb = clustered_gallery(size, q_tok, dim, args.seed)
            settings = IndexSettings(
                approximate_from=1,
                ann_encoding=args.encoding,
                ann_nprobe=args.nprobe,
                ann_candidates=args.candidates,
            )
            index, build_s = synthetic_index(emb, settings)
            g = torch.Generator().manual_seed(args.seed + 1)
            picks = torch.randint(0, size, (args.queries,), generator=g)
            tokens = torch.randint(0, q_tok, (args.queries,), generator=g)
            queries = F.normalize(
                emb[picks, tokens] + 0.15 * torch.randn(args.queries, dim, generator=g), dim=-1
            )
            exact_ms, approx_ms, recalls = compare_one_by_one(index, queries)
            row = {
                "gallery": size,
                "tokens": q_tok,
                "dim": dim,
                "exact_ms": statistics.median(exact_ms),
                "approx_ms": statistics.median(approx_ms),
                "speedup": statistics.median(exact_ms) / statistics.median(approx_ms),
                "recall_at_50": float(np.mean(recalls)),
                "min_recall_at_50": float(np.min(recalls)),
                "nlist": index.ann.nlist,
                "nprobe": args.nprobe,
                "candidates": args.candidates,
                "encoding": args.encoding,
                "faiss_build_s": build_s,
                "embeddings_gib": emb.numel() * 4 / 2**30,
            }
            rows.append(row)
            print(
                f"{size:>7} images {q_tok:>2}x{dim:<3}  exact {row['exact_ms']:7.1f} ms  "
                f"approx {row['approx_ms']:6.1f} ms  ({row['speedup']:5.1f}x)  "
                f"recall@50 {row['recall_at_50']:.4f} (min {row['min_recall_at_50']:.2f})  "
                f"IVF{row['nlist']},{args.encoding} nprobe {args.nprobe} built in {build_s:.1f} s",
                flush=True,
            )
            del index, emb
    return rows


def bench_trained(data_root: Path, benchmark: str, repeats: int) -> dict[str, Any]:
    """Warm one-query latency of the trained model on the run's own gallery index."""
    models = data_root / benchmark / "06_models"
    torch.set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    model = QueryModel.from_pretrained(models / "query_model")
    index = GalleryIndex.load(models / "gallery_index")
    load_s = time.perf_counter() - t0
    searcher = Searcher(model, index)
    rankings = pd.read_parquet(data_root / benchmark / "07_model_output/query_rankings.parquet")
    images = pd.read_parquet(data_root / benchmark / "02_intermediate/images.parquet")
    row = rankings.iloc[0]
    ref = images.drop_duplicates("image_id").set_index("image_id")["path"][row["reference_id"]]
    total, _ = timed(lambda: searcher.search(ref, row["text"], 10), repeats)
    decode, img = timed(lambda: load_image_file(ref), repeats)
    encode, q = timed(lambda: model.encode_queries([img.image], [row["text"]]), repeats)
    search, _ = timed(lambda: index.search(q, 10, [img.content_hash]), repeats)
    out = {
        "gallery": len(index),
        "load_s": load_s,
        "query_ms": total,
        "decode_ms": decode,
        "encode_ms": encode,
        "search_ms": search,
        "threads": torch.get_num_threads(),
    }
    print(
        f"trained model, {benchmark} {index.meta.get('source')} gallery ({len(index)} images): "
        f"one query {total:.1f} ms warm (decode {decode:.1f} + ViT/Q-Former {encode:.1f} + "
        f"search {search:.1f}); export + index load {load_s:.2f} s"
    )
    return out


def bench_registered(uri: str) -> dict[str, Any]:
    """Fresh process: import, ``mlflow.pyfunc.load_model`` and the first answer."""
    code = (
        "import json, time\n"
        "t0 = time.perf_counter()\n"
        "import mlflow.pyfunc\n"
        "t1 = time.perf_counter()\n"
        f"m = mlflow.pyfunc.load_model({uri!r})\n"
        "t2 = time.perf_counter()\n"
        "out = m.predict(m.input_example)\n"
        "t3 = time.perf_counter()\n"
        "out = m.predict(m.input_example)\n"
        "t4 = time.perf_counter()\n"
        "print(json.dumps({'import_s': t1 - t0, 'load_s': t2 - t1, 'first_answer_s': t3 - t2,"
        " 'second_answer_s': t4 - t3}))\n"
    )
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:  # e.g. MLFLOW_TRACKING_URI does not point at the registry
        raise SystemExit(f"loading {uri} failed:\n{proc.stderr[-3000:]}")
    wall = time.perf_counter() - t0
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = wall
    print(
        f"registered model {uri}: fresh process {wall:.1f} s in all (import mlflow "
        f"{out['import_s']:.1f} s, load_model {out['load_s']:.1f} s, first answer "
        f"{1000 * out['first_answer_s']:.0f} ms, second {1000 * out['second_answer_s']:.0f} ms)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[10000, *FASHIONIQ_SIZES, 100000])
    ap.add_argument("--shapes", nargs="*", default=["16x64", "32x256"], help="QxP per image")
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--nprobe", type=int, default=IndexSettings().ann_nprobe)
    ap.add_argument("--candidates", type=int, default=IndexSettings().ann_candidates)
    ap.add_argument("--encoding", default=IndexSettings().ann_encoding)
    ap.add_argument("--data-root", type=Path, help="a data root with a trained run")
    ap.add_argument("--benchmark", default="synthetic")
    ap.add_argument("--registered-model", help="e.g. models:/dqe_cir_synthetic/latest")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    figures: dict[str, Any] = {"threads": torch.get_num_threads()}
    if args.data_root:
        figures["trained"] = bench_trained(args.data_root, args.benchmark, args.repeats)
    if args.registered_model:
        figures["registered"] = bench_registered(args.registered_model)
    if args.sizes:
        figures["synthetic"] = bench_synthetic(args)
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
