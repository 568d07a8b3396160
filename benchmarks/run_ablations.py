"""Run the ablation set on the generated benchmark and print mean +- std over seeds.

Variants: DQE-CIR, in-batch contrastive (SPRC/CLIP4Cir), QuRe negatives,
and DQE-CIR without attribute weights / without TRNS / without margins. Every variant
uses the project's default parameters (``conf/base``) plus its overrides, the same data,
the same frozen tiny backbone and the same features; the best epoch is selected on val
and its weights are reported on the held-out test split (scene families disjoint from
train and val), so no number in the table was used for a choice. The untrained model and
the text-blind pixel baseline are reported on test alongside. Each row also keeps the
best epoch's val metrics as ``val/<metric>``.

Every (variant, seed) also writes its test queries' ranks (``--queries``, default beside
``--out``), so ``--compare <that folder>`` can report each variant minus DQE-CIR with a
paired bootstrap interval over queries and seeds (``_ablation_compare.py``). ``--tier
ambiguous`` runs on the ambiguous tier (several valid targets per query: recall_any@K
and mAP@K too; ``--data key=value`` resizes it). ``--grid`` with ``--variants`` tunes
every listed variant over the same combinations (an equal budget), choosing each
variant's combination by its best-epoch val ``avg`` (mean over seeds; with ``--tune-seeds``
over those seeds only, and the chosen combination then runs at the other ``--seeds``);
``--grid`` alone runs the combinations of the default recipe as variants of their own.
The images are encoded once per tier and backbone (``_ablation_setup.py``: a token file
that every ``--jobs`` process memory-maps).

Imports no Kedro or MLflow, so it also runs on a bare GPU machine::

    PYTHONPATH=src python benchmarks/run_ablations.py --seeds 0 1 2 --out results.json
    PYTHONPATH=src python benchmarks/run_ablations.py --compare results_queries
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from _ablation_compare import (
    compare,
    compare_table,
    largest_errors,
    read_queries,
    sampling_errors,
    write_queries,
)
from _ablation_grid import Job, Overrides, Plan, plan_jobs, publish_chosen, resumed_rows
from _ablation_setup import (
    SYNTHETIC,
    TIERS,
    Setup,
    base_params,
    prepare,
    setup_record_base,
    test_families,
)

from dqe_cir_pipeline.baselines import text_blind_baseline
from dqe_cir_pipeline.io_utils import stable_hash
from dqe_cir_pipeline.model.config import RuntimeConfig
from dqe_cir_pipeline.model.data import TrainData
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate
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
    "no_attr_weights": ({"model": {"use_attribute_weights": False}}, {}),
    "no_trns": ({"loop": {"negatives": "random"}}, {}),
    # The hardest candidate at or below the target's score (no gap, one kept): the
    # negatives the mid-zone is designed to avoid, since near-ties include valid targets.
    "hardest_negatives": ({}, {"epsilon": 0.0, "zone_keep": "hardest", "max_zone": 1}),
    "qure_negatives": (
        {"loop": {"initial_negatives": "random", "refresh_interval": None}},
        {"strategy": "qure"},
    ),
    "no_margins": ({"loss": {"use_margins": False}}, {}),
}
#: The split every epoch is validated on and the best epoch is chosen by.
SELECTION_SPLIT = "val"
#: The held-out split the table reports.
REPORT_SPLIT = "test"
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
#: Columns added where the rows have them (the ambiguous tier).
MULTI_COLUMNS = [
    "recall_any@1",
    "recall_any@10",
    "map@10",
    "map@50",
    "negatives/false_negative_rate",
    "mining/false_negative_rate",
]


def training_config(params: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> TrainingConfig:
    """``conf/base``'s training blocks with ``overrides`` merged into each block."""
    blocks = {
        name: {**values, **overrides.get(name, {})} for name, values in params["training"].items()
    }
    blocks["loop"]["run_dir"] = None  # the ablations keep nothing on disk
    return TrainingConfig(**blocks)


def run_variant(
    overrides: Overrides,
    seed: int,
    prep: dict[str, Any],
    params: dict[str, Any],
    device: str,
    epochs: int | None,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Train one recipe at ``seed``, select its best epoch on val, evaluate it on test.

    Returns:
        The row's metrics and the test queries' per-query ranks.
    """
    t_over, m_over = overrides
    loop = {"seed": seed, "run_dir": None, **({"epochs": epochs} if epochs is not None else {})}
    cfg = training_config(params, {**t_over, "loop": {**t_over.get("loop", {}), **loop}})
    mcfg = MiningConfig(**{**params["mining"], **m_over, "seed": seed})
    bb = prep["backbone"]
    model = build_model(bb, cfg.model, seed, device)
    data = TrainData.from_tables(prep["triplets"], prep["images"], protocol=SYNTHETIC.protocol)
    val = EvalSet.from_tables(prep["triplets"], prep["images"], SELECTION_SPLIT)
    test = EvalSet.from_tables(prep["triplets"], prep["images"], REPORT_SPLIT)

    def evaluate_on(m: Any, split: EvalSet) -> Any:
        return evaluate(
            m,
            prep["features"],
            bb.tokenizer,
            split,
            max_len=bb.max_text_len,
            protocol=SYNTHETIC.protocol,
        )

    t0 = time.perf_counter()
    result = fit(
        cfg,
        FitData(data, prep["features"], lambda m: evaluate_on(m, val).metrics),
        model,
        bb,
        mcfg,
        runtime=RuntimeConfig(device=device),
    )
    seconds = time.perf_counter() - t0
    # the best epoch (chosen on val) is what the table reports, measured on test
    model.load_state_dict(result.best_checkpoint["model"])
    out = evaluate_on(model, test)
    metrics = dict(out.metrics)
    metrics.update({f"val/{k}": float(v) for k, v in result.best_checkpoint["metrics"].items()})
    metrics["seconds"] = seconds
    metrics["best_epoch"] = float(result.best_checkpoint["epoch"])
    # what the negatives were, averaged over the epochs trained (and the last refresh)
    history = pd.DataFrame(result.history)
    for col in [c for c in history.columns if c.startswith("train/negatives/")]:
        metrics[col.removeprefix("train/")] = float(history[col].mean())
    if result.mining_summaries:
        last = result.mining_summaries[-1]
        metrics.update(
            {
                f"mining/{k}": float(v)
                for k, v in last.items()
                if "/" in k or k == "false_negative_rate"
            }
        )
    return metrics, out.per_query


def run_job(
    job: Job,
    seed: int,
    prep: dict[str, Any],
    params: dict[str, Any],
    device: str,
    epochs: int | None,
    queries: Path | None,
) -> dict[str, Any]:
    """One (recipe, seed): its row; its per-query ranks are written under ``queries``."""
    metrics, per_query = run_variant(job.overrides, seed, prep, params, device, epochs)
    if queries is not None:
        write_queries(queries, per_query, job.variant, seed, job.grid)
    logging.info(
        "%s%s seed %d: test avg %.2f R@10 %.2f, val avg %.2f (%.0fs)",
        job.variant,
        f" [{job.grid}]" if job.grid else "",
        seed,
        metrics["avg"],
        metrics["recall@10"],
        metrics["val/avg"],
        metrics["seconds"],
    )
    return {
        "variant": job.variant,
        **({"grid": job.grid} if job.grid else {}),
        "seed": seed,
        **metrics,
    }


def _quiet_logs(fmt: str) -> None:
    logging.basicConfig(level=logging.INFO, format=fmt)
    for noisy in (
        "dqe_cir_pipeline.model.negatives",
        "dqe_cir_pipeline.model.train",
        "transformers",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: A worker process's prepared data, made once per process (``--jobs``).
_PREPARED: dict[Setup, tuple[dict[str, Any], dict[str, Any]]] = {}


def run_in_worker(
    job: Job, seed: int, setup: Setup, device: str, epochs: int | None
) -> dict[str, Any]:
    """One (recipe, seed) in a worker; the data is prepared once per worker (the features
    are memory-mapped from the setup's folder, which the main process filled)."""
    _quiet_logs(f"%(asctime)s [{job.variant}] %(message)s")
    if setup not in _PREPARED:
        params = base_params(setup)
        _PREPARED[setup] = (params, prepare(setup.root, params, resolve_device(device)))
    params, prep = _PREPARED[setup]
    return run_job(job, seed, prep, params, device, epochs, setup.queries)


def table(rows: list[dict[str, Any]]) -> str:
    df = pd.DataFrame(rows)
    columns = COLUMNS + [c for c in MULTI_COLUMNS if c in df]
    lines = ["| variant | " + " | ".join(columns) + " | s/run |", "|---" * (len(columns) + 2) + "|"]
    for name, g in df.groupby("variant", sort=False):
        cells = []
        for col in columns:
            vals = g[col].to_numpy(dtype=float) if col in g else np.array([np.nan])
            digits = 2 if col.startswith("weights/") or "share" in col or "rate" in col else 1
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


def run_compare(
    folder: Path,
    baseline: str,
    n_boot: int,
    out: Path | None,
    families: dict[str, str] | None,
    seeds: list[int],
) -> None:
    """Print (and write) every variant minus ``baseline`` with paired bootstrap intervals
    (whole scene families resampled when ``families`` is given)."""
    frame = read_queries(folder)
    frame = frame[frame["seed"].isin(seeds)]  # --seeds: e.g. the seeds every row has so far
    results = compare(frame, baseline=baseline, n_boot=n_boot, families=families)
    first = results[0] if results else {"seeds": 0, "queries": 0, "families": 0}
    unit = (
        f"{first['families']} scene families ({first['queries']} queries)"
        if first["families"]
        else f"{first['queries']} queries"
    )
    print(
        f"variant - {baseline} on {REPORT_SPLIT}, points; paired bootstrap 95 % interval over "
        f"{unit} x {first['seeds']} seeds ({n_boot} replicates)"
    )
    text = compare_table(results, baseline)
    print(text)
    errors = sampling_errors(frame, families)
    if errors:
        largest = largest_errors(errors)
        print(
            "largest standard error of one run's metric from the test split alone ("
            + ("queries clustered by scene family" if families else "independent queries")
            + "): "
            + ", ".join(f"{m} {se:.2f}" for m, se in largest.items())
        )
    _write_rows(
        out,
        {
            "baseline": baseline,
            "n_boot": n_boot,
            "comparisons": results,
            "table": text,
            "sampling_errors": errors,
        },
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants", nargs="+", default=None, help=f"default: all ({', '.join(VARIANTS)})"
    )
    parser.add_argument(
        "--grid",
        nargs="+",
        default=None,
        help="combinations, e.g. optim.lr=1e-4,3e-4 loop.epochs=12,20: with --variants every "
        "variant is tuned over them (chosen on val); alone, each is a variant of the default",
    )
    parser.add_argument(
        "--tune-seeds",
        type=int,
        nargs="+",
        default=None,
        help="with --grid and --variants: the seeds the grid runs at (val chooses on them); "
        "the chosen combination then runs at the other --seeds (default: every seed)",
    )
    parser.add_argument(
        "--tune-only",
        nargs="+",
        default=None,
        help="with --grid: tune only these variants (the --baseline among them); the other "
        "--variants take the baseline's chosen combination",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in --out (with their per-query files) and run the rest",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="run nothing: read the runs in --out so far (a table still running, or cut "
        "short), choose on val as a full run would, print the table and write it here",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override training.loop.epochs")
    parser.add_argument("--tier", choices=TIERS, default="unique", help="the generated tier")
    parser.add_argument(
        "--data", nargs="+", default=[], help="data.synthetic overrides, e.g. test_families=50"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/dqe_ablations"))
    parser.add_argument("--out", type=Path, default=None, help="write rows + table as JSON")
    parser.add_argument(
        "--queries",
        type=Path,
        default=None,
        help="per-query ranks folder (default: <out>_queries, or <workdir>/queries)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="(recipe, seed) runs in parallel processes; on a CPU give each one thread "
        "(OMP_NUM_THREADS=1)",
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
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="run nothing: each variant of this per-query folder minus --baseline, with "
        "paired bootstrap intervals (same seeds and queries required)",
    )
    parser.add_argument("--baseline", default="dqe_cir", help="with --compare")
    parser.add_argument(
        "--cluster",
        choices=("family", "query"),
        default="family",
        help="with --compare: resample whole scene families (read from the benchmark of "
        "--tier/--data/--workdir; its queries share a reference) or single queries",
    )
    parser.add_argument("--n-boot", type=int, default=10_000, help="with --compare")
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


def run_jobs(
    plan: Plan,
    args: argparse.Namespace,
    setup: Setup,
    prep: dict[str, Any],
    params: dict[str, Any],
    device: torch.device,
    rows: list[dict[str, Any]],
) -> None:
    """Run the plan, appending each (recipe, seed) to ``rows`` and ``--out`` as it ends.

    The next run is picked from what the finished ones allow (``Plan.pending``), tuning
    runs first, then seed by seed, so an interrupted table has whole seeds for every row;
    ``--jobs`` processes take runs in turn."""
    if args.jobs <= 1:
        while pending := plan.pending(rows):
            job, seed = pending[0]
            rows.append(run_job(job, seed, prep, params, str(device), args.epochs, setup.queries))
            _write_rows(args.out, progress(args, setup, device, rows))
        return
    ctx = multiprocessing.get_context("spawn")  # CUDA cannot be re-initialised in a fork
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
        running: dict[Future[dict[str, Any]], tuple[str, str, int]] = {}
        while True:
            busy = set(running.values())
            for job, seed in plan.pending(rows):
                if len(running) >= args.jobs:
                    break
                if (job.variant, job.grid, seed) not in busy:
                    fut = pool.submit(run_in_worker, job, seed, setup, str(device), args.epochs)
                    running[fut] = (job.variant, job.grid, seed)
            if not running:
                return
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                del running[fut]
                rows.append(fut.result())
                _write_rows(args.out, progress(args, setup, device, rows))


def progress(
    args: argparse.Namespace, setup: Setup, device: torch.device, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """The document ``--out`` holds while runs go on (``--resume`` reads it back)."""
    return {"device": str(device), "setup": setup_record(setup, args), "rows": rows}


def run_plan(args: argparse.Namespace) -> Plan:
    """The runs of this invocation (refuses a clashing grid or bad flags before any work).

    ``--tune-only``: the listed variants are tuned over ``--grid``; the others of
    ``--variants`` take the baseline's chosen combination (ablations of the baseline).
    ``--tune-seeds``: the grid runs at these seeds only; the chosen combination then runs
    at the other ``--seeds``."""
    tune_only = args.tune_only or []
    if (args.tune_seeds or tune_only) and not (args.grid and args.variants):
        raise ValueError("--tune-seeds and --tune-only need --grid and --variants")
    if not set(args.tune_seeds or []) <= set(args.seeds):
        raise ValueError(f"--tune-seeds {args.tune_seeds} must be among --seeds {args.seeds}")
    if tune_only and (args.baseline not in tune_only or not set(tune_only) <= set(args.variants)):
        raise ValueError("--tune-only lists variants of --variants, the --baseline among them")
    tuned = plan_jobs(VARIANTS, tune_only or args.variants, args.grid)
    inherit = [v for v in args.variants or [] if tune_only and v not in tune_only]
    if inherit:  # the combinations must not clash with the inheriting variants either
        plan_jobs(VARIANTS, inherit, args.grid)
    return Plan(
        known=VARIANTS,
        tuned=tuned,
        grid=args.grid or [],
        tune=list(args.tune_seeds or args.seeds),
        seeds=list(args.seeds),
        inherit=inherit,
        baseline=args.baseline,
    )


def setup_record(setup: Setup, args: argparse.Namespace) -> dict[str, Any]:
    """What the rows of ``--out`` depend on besides the recipe and seed (``--resume``)."""
    return {
        **setup_record_base(setup, args.epochs),
        "variants": stable_hash(VARIANTS),
    }


def row_order(row: dict[str, Any]) -> tuple[int, str, int]:
    """Floors, then the variants in their table order, then grid and seed."""
    order = {name: i for i, name in enumerate([*FLOORS, *VARIANTS])}
    return (order.get(row["variant"], len(order)), row.get("grid", ""), int(row["seed"]))


def _setup(args: argparse.Namespace) -> Setup:
    data = tuple((k, yaml.safe_load(v)) for k, _, v in (d.partition("=") for d in args.data))
    queries = args.queries
    if queries is None:
        queries = (
            args.out.with_name(args.out.stem + "_queries") if args.out else args.workdir / "queries"
        )
    return Setup(tier=args.tier, data=data, workdir=args.workdir, queries=queries)


def main() -> None:
    args = _parser().parse_args()
    if args.merge:
        merge(args.merge, dict(r.rsplit("=", 1) for r in args.rename), args.out)
        return
    if args.compare:
        families = test_families(_setup(args)) if args.cluster == "family" else None
        run_compare(args.compare, args.baseline, args.n_boot, args.out, families, args.seeds)
        return
    _quiet_logs("%(asctime)s %(message)s")
    setup = _setup(args)
    plan = run_plan(args)
    device = resolve_device(args.device)
    record = setup_record(setup, args)
    resume = (args.resume or args.report) and args.out
    rows = resumed_rows(args.out, setup.queries, record) if resume else []
    if args.report:  # run nothing: the table of what --out holds so far
        args.out = args.report
    else:
        params = base_params(setup)
        prep = prepare(setup.root, params, device)
        if not set(FLOORS) <= {r["variant"] for r in rows}:
            rows = floor_rows(prep, params, device) + rows
        run_jobs(plan, args, setup, prep, params, device, rows)
    chosen = plan.choices(rows)
    if setup.queries is not None:
        publish_chosen(rows, chosen, setup.queries)
    rows.sort(key=row_order)
    tuning = [r for r in rows if r.get("grid")]
    final = [r for r in rows if not r.get("grid") or chosen.get(r["variant"]) == r["grid"]]
    text = table(final)
    print(f"device: {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'})")
    print(f"tier {setup.tier}; best epoch selected on {SELECTION_SPLIT}; numbers on {REPORT_SPLIT}")
    for variant, combo in chosen.items():
        how = f"{args.baseline}'s" if variant in plan.inherit else f"chosen on {SELECTION_SPLIT}"
        print(f"{variant}: {how} (seeds {plan.tune}): {combo}")
    print(text)
    print(f"per-query ranks: {setup.queries} (compare: --compare {setup.queries})")
    _write_rows(
        args.out,
        {
            "device": str(device),
            "setup": setup_record(setup, args),
            "tier": setup.tier,
            "selection_split": SELECTION_SPLIT,
            "report_split": REPORT_SPLIT,
            "rows": final,
            **({"grid_rows": tuning, "chosen": chosen, "tune_seeds": plan.tune} if chosen else {}),
            "table": text,
        },
    )


if __name__ == "__main__":
    main()
