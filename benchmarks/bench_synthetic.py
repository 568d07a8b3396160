"""Benchmark the synthetic CIR benchmark generator and its text-blind baseline.

Generates the default benchmark (or a scaled one) into a fresh temporary directory,
then prints wall / CPU time, images per second, triplet counts per split and edit type,
the idempotent re-call time, and the text-blind pixel baseline per split, ranked by the
evaluation's own protocol (CIRR: reference removed, ties counted against the target).

Usage::

    .venv/bin/python benchmarks/bench_synthetic.py
    .venv/bin/python benchmarks/bench_synthetic.py --scale 2 --seed 1
    .venv/bin/python benchmarks/bench_synthetic.py --root /fast/disk/syn --keep
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from dqe_cir_pipeline.baselines import text_blind_baseline
from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark
from dqe_cir_pipeline.model.evaluate import EvalSet

KS = (1, 5, 10, 50)


def text_blind(root: Path, splits: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The text-blind baseline's CIRR metrics (percent) per split, as the evaluation has them."""
    cfg = CIRRConfig(
        splits=splits,
        dataset_name="synthetic",
        version=None,
        unlabelled_splits=(),  # every generated split has targets
        image_check="exists",
    )
    tables = read_cirr(root, root, cfg)
    out = {}
    for split in splits:
        data = EvalSet.from_tables(tables.triplets, tables.images, split)
        metrics = text_blind_baseline(tables.images, data, KS).metrics
        out[split] = {k: v for k, v in metrics.items() if "/" not in k}
    return out


def main() -> None:
    """Parse arguments, run the generator and the baseline, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the family counts")
    parser.add_argument("--root", type=Path, default=None, help="default: a temp directory")
    parser.add_argument("--keep", action="store_true", help="keep the generated benchmark")
    args = parser.parse_args()

    base = SyntheticConfig(seed=args.seed)
    cfg = replace(
        base,
        train_families=max(1, round(base.train_families * args.scale)),
        val_families=max(1, round(base.val_families * args.scale)),
        test_families=round(base.test_families * args.scale),
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench_synthetic_"))
    root = args.root or tmp / "synthetic"
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        summary = generate_benchmark(root, cfg)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        reuse = generate_benchmark(root, cfg)
        t0 = time.perf_counter()
        baseline = text_blind(
            root, tuple(s for s in ("val", "test", "train") if s in summary["splits"])
        )
        t_baseline = time.perf_counter() - t0

        print(f"config: {json.dumps(cfg.__dict__, default=list)}")
        print(f"cores: {os.cpu_count()}  load avg (1 min): {os.getloadavg()[0]:.2f}")
        print(
            f"generated {summary['images']} images, {summary['triplets']} triplets "
            f"in {wall:.2f} s wall ({cpu:.2f} s CPU of this process): "
            f"{summary['images'] / wall:.0f} images/s"
        )
        for split, info in summary["splits"].items():
            print(
                f"  {split}: {info['families']} families, {info['images']} images, "
                f"{info['triplets']} triplets, edit types {info['edit_types']}"
            )
        total = summary["triplets"]
        shares = {k: f"{100 * v / total:.1f}%" for k, v in summary["edit_types"].items()}
        print(f"  edit-type shares: {shares}")
        print(f"idempotent re-call: reused={reuse['reused']} in {reuse['seconds'] * 1e3:.1f} ms")
        print(f"text-blind pixel baseline (evaluation protocol, %), {t_baseline:.2f} s:")
        for split, res in baseline.items():
            print(f"  {split}: " + "  ".join(f"{k} {v:.1f}" for k, v in res.items()))
        if args.keep:
            print(f"kept: {root}")
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            if args.root is not None:
                shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
