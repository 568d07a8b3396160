"""Run the ablation set on the generated benchmark and print mean +- std over seeds.

Variants: DQE-CIR, in-batch contrastive (SPRC/CLIP4Cir), QuRe negatives,
and DQE-CIR without attribute weights / without TRNS / without margins. Every variant
uses the project's default parameters (``conf/base``) plus its overrides, the same data,
the same frozen tiny backbone and the same features; the best epoch is selected on val
and its weights are reported on the held-out test split (scene families disjoint from
train and val), so no number in the table was used for a choice. The untrained model and
the text-blind pixel baseline are reported on test alongside. Each row also keeps the
best epoch's val metrics as ``val/<metric>``.

Imports no Kedro or MLflow, so it also runs on a bare GPU machine::

    PYTHONPATH=src python benchmarks/run_ablations.py --seeds 0 1 2 --out results.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from dqe_cir_pipeline.baselines import text_blind_baseline
from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.data_sources.image_check import default_workers
from dqe_cir_pipeline.data_sources.registry import ReadSettings, benchmark
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.model.config import RuntimeConfig
from dqe_cir_pipeline.model.data import TrainData, train_captions
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate
from dqe_cir_pipeline.model.extract import VitEncoder, extract_to_memory
from dqe_cir_pipeline.model.factory import build_model, build_untrained_model
from dqe_cir_pipeline.model.negatives import MiningConfig
from dqe_cir_pipeline.model.train import FitData, fit
from dqe_cir_pipeline.model.train_config import TrainingConfig

#: variant -> (overrides of the training blocks, overrides of mining)
VARIANTS: dict[str, tuple[dict[str, dict[str, Any]], dict[str, Any]]] = {
    "dqe_cir": ({}, {}),
    # In-batch contrastive (SPRC / CLIP4Cir) with the same 2B candidates per row as
    # DQE-CIR's batch_kl: the batch's targets plus one *random* image per row, no
    # attribute weights, no margins. (objective "contrastive" alone would see B.)
    "contrastive": (
        {
            "loss": {"objective": "batch_kl", "use_margins": False},
            "loop": {"negatives": "random"},
            "model": {"use_attribute_weights": False},
        },
        {},
    ),
    "pairwise_kl": ({"loss": {"objective": "pairwise_kl"}}, {}),
    "qure_negatives": (
        {"loop": {"initial_negatives": "random", "refresh_interval": None}},
        {"strategy": "qure"},
    ),
    "no_attr_weights": ({"model": {"use_attribute_weights": False}}, {}),
    "no_trns": ({"loop": {"negatives": "random"}}, {}),
    "no_margins": ({"loss": {"use_margins": False}}, {}),
}
#: The split every epoch is validated on and the best epoch is chosen by.
SELECTION_SPLIT = "val"
#: The held-out split the table reports.
REPORT_SPLIT = "test"
#: The generated benchmark's registry entry: its reader and its evaluation protocol (looked
#: up at import, so that spawned workers have the protocols registered too).
SYNTHETIC = benchmark("synthetic")
COLUMNS = [
    "avg",
    "recall@1",
    "recall@5",
    "recall@10",
    "recall_subset@1",
    "color/recall@10",
    "shape/recall@10",
    "both/recall@10",
    "other/recall@10",
    "weights/color/color",
    "weights/color/shape",
    "weights/shape/color",
    "weights/shape/shape",
    "negatives/neighbourhood_share",
]


def base_params() -> dict[str, Any]:
    """``conf/base``'s parameters, read by the project's own config loader."""
    return project_config_loader("base")["parameters"]


def training_config(params: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> TrainingConfig:
    """``conf/base``'s training blocks with ``overrides`` merged into each block."""
    blocks = {
        name: {**values, **overrides.get(name, {})} for name, values in params["training"].items()
    }
    blocks["loop"]["run_dir"] = None  # the ablations keep nothing on disk
    return TrainingConfig(**blocks)


def prepare(root: Path, params: dict[str, Any], device: torch.device) -> dict[str, Any]:
    block = SYNTHETIC.source({**params["data"]["synthetic"], "root": str(root / "benchmark")})
    if block.test_families < 1:
        raise ValueError("the ablations report on the test split: data.synthetic.test_families")
    folders = SYNTHETIC.folders(block)  # generated (or reused), then read as a run reads it
    tables = SYNTHETIC.read(
        folders.annotation_root,
        folders.image_root,
        block,
        ReadSettings(workers=default_workers(), image_check="decode"),
    )
    images, triplets = tables.images, tables.triplets
    bcfg = BackboneConfig(**{**params["backbone"], "tiny_dir": str(root / "tiny_backbone")})
    backbone = load_backbone(bcfg, train_captions(triplets))
    unique = images.drop_duplicates("image_id")
    t0 = time.perf_counter()
    features = extract_to_memory(
        VitEncoder(backbone, device, batch_size=256),
        unique["image_id"].tolist(),
        unique["path"].tolist(),
    )
    logging.info("extracted %d images in %.1fs", len(unique), time.perf_counter() - t0)
    return {"images": images, "triplets": triplets, "backbone": backbone, "features": features}


Overrides = tuple[dict[str, dict[str, Any]], dict[str, Any]]


def grid_variants(specs: list[str]) -> dict[str, Overrides]:
    """``["optim.lr=1e-4,3e-4", "loop.epochs=12,20"]`` -> one variant per combination,
    named ``lr=1e-4 epochs=12``; values are parsed as YAML scalars (numbers, null, true)."""
    axes = []
    for spec in specs:
        path, _, values = spec.partition("=")
        block, _, key = path.partition(".")
        if not values or block not in ("model", "loss", "optim", "loop", "mining") or not key:
            raise ValueError(
                f"--grid takes <block>.<key>=v1,v2 with a training block or mining, got {spec!r}"
            )
        axes.append([(block, key, text) for text in values.split(",")])
    out: dict[str, Overrides] = {}
    for combo in itertools.product(*axes):
        over: dict[str, dict[str, Any]] = {}
        mining: dict[str, Any] = {}
        for block, key, text in combo:
            target = mining if block == "mining" else over.setdefault(block, {})
            target[key] = yaml.safe_load(text)
        out[" ".join(f"{key}={text}" for _, key, text in combo)] = (over, mining)
    return out


def run_variant(
    name: str,
    overrides: Overrides,
    seed: int,
    prep: dict[str, Any],
    params: dict[str, Any],
    device: str,
    epochs: int | None,
) -> dict[str, float]:
    t_over, m_over = overrides
    loop = {"seed": seed, "run_dir": None, **({"epochs": epochs} if epochs is not None else {})}
    cfg = training_config(params, {**t_over, "loop": {**t_over.get("loop", {}), **loop}})
    mcfg = MiningConfig(**{**params["mining"], **m_over, "seed": seed})
    bb = prep["backbone"]
    model = build_model(bb, cfg.model, seed, device)
    data = TrainData.from_tables(prep["triplets"], prep["images"], protocol=SYNTHETIC.protocol)
    val = EvalSet.from_tables(prep["triplets"], prep["images"], SELECTION_SPLIT)
    test = EvalSet.from_tables(prep["triplets"], prep["images"], REPORT_SPLIT)

    def validate(m: Any) -> dict[str, float]:
        return evaluate(
            m,
            prep["features"],
            bb.tokenizer,
            val,
            max_len=bb.max_text_len,
            protocol=SYNTHETIC.protocol,
        ).metrics

    t0 = time.perf_counter()
    result = fit(
        cfg,
        FitData(data, prep["features"], validate),
        model,
        bb,
        mcfg,
        runtime=RuntimeConfig(device=device),
    )
    seconds = time.perf_counter() - t0
    # the best epoch (chosen on val) is what the table reports, measured on test
    model.load_state_dict(result.best_checkpoint["model"])
    metrics = evaluate(
        model,
        prep["features"],
        bb.tokenizer,
        test,
        max_len=bb.max_text_len,
        protocol=SYNTHETIC.protocol,
    ).metrics
    metrics = dict(metrics)
    metrics.update({f"val/{k}": float(v) for k, v in result.best_checkpoint["metrics"].items()})
    metrics["seconds"] = seconds
    metrics["best_epoch"] = float(result.best_checkpoint["epoch"])
    # what the negatives were, averaged over the epochs trained (and the last refresh)
    history = pd.DataFrame(result.history)
    for col in [c for c in history.columns if c.startswith("train/negatives/")]:
        metrics[col.removeprefix("train/")] = float(history[col].mean())
    if result.mining_summaries:
        last = result.mining_summaries[-1]
        metrics.update({f"mining/{k}": float(v) for k, v in last.items() if "/" in k})
    return metrics


def run_variant_seeds(
    name: str,
    overrides: Overrides,
    seeds: list[int],
    workdir: Path,
    device: str,
    epochs: int | None,
) -> list[dict[str, Any]]:
    """One worker: load the prepared data (reused from ``workdir``), run every seed."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{name}] %(message)s")
    for noisy in (
        "dqe_cir_pipeline.model.negatives",
        "dqe_cir_pipeline.model.train",
        "transformers",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    params = base_params()
    prep = prepare(workdir, params, resolve_device(device))
    rows = []
    for seed in seeds:
        metrics = run_variant(name, overrides, seed, prep, params, device, epochs)
        rows.append({"variant": name, "seed": seed, **metrics})
        logging.info(
            "seed %d: test avg %.2f R@10 %.2f, val avg %.2f (%.0fs)",
            seed,
            metrics["avg"],
            metrics["recall@10"],
            metrics["val/avg"],
            metrics["seconds"],
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    df = pd.DataFrame(rows)
    lines = ["| variant | " + " | ".join(COLUMNS) + " | s/run |", "|---" * (len(COLUMNS) + 2) + "|"]
    for name, g in df.groupby("variant", sort=False):
        cells = []
        for col in COLUMNS:
            vals = g[col].to_numpy(dtype=float) if col in g else np.array([np.nan])
            digits = 2 if col.startswith("weights/") or "share" in col else 1
            std = vals.std(ddof=1) if len(vals) > 1 else 0.0
            cells.append(f"{vals.mean():.{digits}f} ± {std:.{digits}f}")
        lines.append(
            f"| {name} (n={len(g)}) | " + " | ".join(cells) + f" | {g['seconds'].mean():.0f} |"
        )
    return "\n".join(lines)


FLOORS = ("text_blind", "zero_shot", "untrained")


def merge(files: list[Path], rename: dict[str, str], out: Path | None) -> None:
    """Print (and write) the table of the rows of several ``--out`` files."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for path in files:
        for row in json.loads(path.read_text())["rows"]:
            row = {**row, "variant": rename.get(row["variant"], row["variant"])}
            key = (row["variant"], int(row["seed"]))
            if key in seen:
                if row["variant"] in FLOORS:
                    continue
                raise ValueError(f"{path}: {key} appears twice in the merged files")
            seen.add(key)
            rows.append(row)
    order = {name: i for i, name in enumerate([*FLOORS, *VARIANTS])}
    rows.sort(key=lambda r: (order.get(r["variant"], len(order)), r["seed"]))
    text = table(rows)
    print(f"best epoch selected on {SELECTION_SPLIT}; numbers on {REPORT_SPLIT}")
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"selection_split": SELECTION_SPLIT, "report_split": REPORT_SPLIT}
        out.write_text(json.dumps({**payload, "rows": rows, "table": text}, indent=1))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument(
        "--grid",
        nargs="+",
        default=None,
        help="instead of --variants: every combination, e.g. optim.lr=1e-4,3e-4 loop.epochs=12,20",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override training.loop.epochs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dqe_ablations"))
    parser.add_argument("--out", type=Path, default=None, help="write rows + table as JSON")
    parser.add_argument(
        "--jobs", type=int, default=1, help="variants run in parallel processes (GPU)"
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="run nothing: merge the rows of these --out files (runs split over processes) "
        "and print the table; floors (text_blind, zero_shot, untrained) are kept once",
    )
    parser.add_argument(
        "--rename",
        nargs="*",
        default=[],
        help="with --merge: old=new variant names (a --grid row that is the default recipe)",
    )
    return parser


def _write_rows(out: Path | None, document: dict[str, Any]) -> None:
    """Write the rows so far (partial results survive a time-out or an interruption)."""
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(document, indent=1))


def floor_rows(
    prep: dict[str, Any], params: dict[str, Any], device: torch.device
) -> list[dict[str, Any]]:
    """The text-blind pixel baseline, the zero-shot and the untrained model on test."""
    test = EvalSet.from_tables(prep["triplets"], prep["images"], REPORT_SPLIT)
    blind = text_blind_baseline(prep["images"], test, (1, 5, 10, 50)).metrics
    rows: list[dict[str, Any]] = [{"variant": "text_blind", "seed": -1, "seconds": 0.0, **blind}]
    cfg0 = training_config(params, {})
    bb = prep["backbone"]
    floors = {
        "zero_shot": build_model(bb, cfg0.model, cfg0.loop.seed, str(device)),
        "untrained": build_untrained_model(bb, cfg0.model, cfg0.loop.seed, str(device)),
    }
    for name, model in floors.items():
        metrics = evaluate(
            model, prep["features"], bb.tokenizer, test, protocol=SYNTHETIC.protocol
        ).metrics
        rows.append({"variant": name, "seed": -1, "seconds": 0.0, **metrics})
    return rows


def run_variants(
    variants: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    prep: dict[str, Any],
    params: dict[str, Any],
    device: torch.device,
    rows: list[dict[str, Any]],
) -> None:
    """Every variant at every seed, appended to ``rows`` (in processes with ``--jobs``)."""
    if args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a fork
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    run_variant_seeds, n, over, args.seeds, args.workdir, str(device), args.epochs
                )
                for n, over in variants.items()
            ]
            for fut in futures:
                rows.extend(fut.result())
                _write_rows(args.out, {"device": str(device), "rows": rows})
        return
    for name, over in variants.items():
        for seed in args.seeds:
            metrics = run_variant(name, over, seed, prep, params, str(device), args.epochs)
            rows.append({"variant": name, "seed": seed, **metrics})
            logging.info(
                "%s seed %d: test avg %.2f R@10 %.2f, val avg %.2f (%.0fs)",
                name,
                seed,
                metrics["avg"],
                metrics["recall@10"],
                metrics["val/avg"],
                metrics["seconds"],
            )
            _write_rows(args.out, {"device": str(device), "rows": rows})


def main() -> None:
    args = _parser().parse_args()
    if args.merge:
        merge(args.merge, dict(r.rsplit("=", 1) for r in args.rename), args.out)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in (
        "dqe_cir_pipeline.model.negatives",
        "dqe_cir_pipeline.model.train",
        "transformers",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    params = base_params()
    device = resolve_device(args.device)
    prep = prepare(args.workdir, params, device)
    rows = floor_rows(prep, params, device)
    variants = grid_variants(args.grid) if args.grid else {n: VARIANTS[n] for n in args.variants}
    run_variants(variants, args, prep, params, device, rows)
    text = table(rows)
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})")
    print(f"best epoch selected on {SELECTION_SPLIT}; numbers on {REPORT_SPLIT}")
    print(text)
    _write_rows(
        args.out,
        {
            "device": str(device),
            "selection_split": SELECTION_SPLIT,
            "report_split": REPORT_SPLIT,
            "rows": rows,
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
