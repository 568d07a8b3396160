"""A rehearsal of the real-data path at full size on a CPU, that anyone can repeat.

Per benchmark (FashionIQ, CIRR), in a work folder of its own (data root and MLflow
store under ``--work``):

1. **Layout.** The real annotation layout under ``<work>/data/<benchmark>/01_raw``: a
   copy of the annotation files a user points ``--annotations`` at (e.g. the real ones,
   without their images), every image their split files list getting a small
   placeholder picture at the path the reader expects; without ``--annotations``, the
   generated placeholder annotations (``data_sources/placeholder.py``, real val sizes at
   ``--scale 1``). A FashionIQ category lacking a file is left out; a CIRR split without
   its captions file (the train captions are not always shipped) is filled with
   placeholder captions over its real image list, or with ``--missing-captions
   image-only`` listed in ``data.cirr.image_only_splits`` as ``conf/cirr`` documents
   (then nothing can be trained: the stages are ingestion, extraction and zero-shot
   evaluation).
2. **Every stage**, each its own ``kedro run --env <benchmark> --pipelines <stage>``
   with the shipped tiny backbone on CPU and one training epoch: ingestion,
   extraction, mining, training, evaluation, serving. Per stage: wall time and peak RSS
   of the process, seconds and peak RSS per node (the ``resources/<node>.*`` metrics the
   ``ResourceHooks`` log to MLflow), and the disk its outputs take.
3. **A no-change re-run** of ``--pipelines train`` (the whole job, as a user re-runs
   it): wall time, peak RSS and seconds per stage.

The figures are printed and written to ``<work>/rehearsal_report.json``; every run's
log and parameters (``kedro run --config``) stay in ``<work>/<benchmark>/``. Stage
outputs from an earlier rehearsal in the same work folder are removed first; the
placeholder pictures are kept.

    python benchmarks/rehearse.py --benchmarks fashioniq cirr --work /tmp/rehearsal
    python benchmarks/rehearse.py --annotations /data/annotations   # <dir>/fashioniq, <dir>/cirr
    python benchmarks/rehearse.py --benchmarks cirr --annotations cirr=/data/cirr/annotations
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent / "src", HERE):  # this checkout before any installed copy
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from _kedro_run import (  # noqa: E402
    ROOT,
    ChildRun,
    Workspace,
    latest_run,
    node_resources,
    node_timeline,
    run_kedro,
)

from dqe_cir_pipeline.data_sources.cirr import CIRRLayout  # noqa: E402
from dqe_cir_pipeline.data_sources.placeholder import (  # noqa: E402
    CIRR_TRAIN_QUERIES,
    PlaceholderConfig,
    write_benchmark,
    write_cirr_captions,
    write_layout_images,
)
from dqe_cir_pipeline.data_sources.registry import benchmark as registered  # noqa: E402
from dqe_cir_pipeline.io_utils import atomic_write_json  # noqa: E402

#: (stage, the pipeline that runs it) in running order.
STAGES = (
    ("ingestion", "data_ingestion"),
    ("extraction", "embedding_extraction"),
    ("mining", "negative_mining"),
    ("training", "training"),
    ("evaluation", "evaluation"),
    ("serving", "serving"),
)
#: Without training triplets (CIRR train captions listed as image-only).
EVALUATE_ONLY = (("ingestion", "data_ingestion"), ("extraction", "embedding_extraction"))
ZERO_SHOT = ("zero_shot", "zero_shot")
#: The annotation folders a copy holds (both benchmarks).
ANNOTATION_DIRS = ("captions", "image_splits")
GIB = 2**30


@dataclass
class Layout:
    """What the layout step made: where from, counts, parameters for the runs."""

    source: str
    counts: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    trainable: bool = True


# -- layout ------------------------------------------------------------------------------
def _copy_annotations(source: Path, target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    for name in ANNOTATION_DIRS:
        if not (source / name).is_dir():
            raise SystemExit(f"{source} has no {name}/ folder: not an annotation folder")
        (target / name).mkdir(parents=True)
        for file in sorted((source / name).glob("*.json")):
            shutil.copyfile(file, target / name / file.name)


def _fashioniq_block(ann: Path, args: argparse.Namespace) -> Layout:
    """Keep the categories that have every file of the environment's splits."""
    entry = registered("fashioniq")
    categories, notes = [], []
    for category in entry.source({}).categories:
        block = entry.source({"annotation_root": str(ann), "categories": [category]})
        absent = [f.path.name for f in entry.layout(block).files() if not f.path.is_file()]
        if absent:
            notes.append(f"category {category} left out: no {', '.join(absent)}")
        else:
            categories.append(category)
    if not categories:
        raise SystemExit(f"FashionIQ: no category has all its files under {ann}: {notes}")
    return Layout(str(ann), {}, {"data.fashioniq.categories": categories}, notes)


def _cirr_block(ann: Path, args: argparse.Namespace) -> Layout:
    """Drop splits without a split file; fill or list as image-only those without captions."""
    block = registered("cirr").source({"annotation_root": str(ann)})
    layout: CIRRLayout = registered("cirr").layout(block)
    splits = [s for s in block.splits if layout.split_file(s).is_file()]
    notes = [
        f"split {s} left out: no {layout.split_file(s).name}"
        for s in block.splits
        if s not in splits
    ]
    missing = [s for s in splits if not layout.caption_file(s).is_file()]
    params: dict[str, Any] = {"data.cirr.splits": splits}
    if args.missing_captions == "image-only":
        params["data.cirr.image_only_splits"] = missing
        notes += [f"{layout.caption_file(s).name} absent: {s} is image-only" for s in missing]
        return Layout(str(ann), {}, params, notes, trainable="train" not in missing)
    for split in missing:
        n = args.train_queries or math.ceil(CIRR_TRAIN_QUERIES * args.scale)
        written = write_cirr_captions(layout, split, n)
        notes.append(
            f"{layout.caption_file(split).name} absent: {written} placeholder records "
            f"over the {split} split's real image list"
        )
    return Layout(str(ann), {}, params, notes)


ADJUST = {"fashioniq": _fashioniq_block, "cirr": _cirr_block}


def annotation_source(spec: Sequence[str], benchmark: str) -> Path | None:
    """The annotation folder ``--annotations`` gives ``benchmark`` (``None``: generate)."""
    for item in spec:
        name, sep, path = item.partition("=")
        if sep and name == benchmark:
            return Path(path)
        if not sep and (Path(item) / benchmark).is_dir():
            return Path(item) / benchmark
        if not sep and (Path(item) / "image_splits").is_dir():
            return Path(item)
    return None


def lay_out(ws: Workspace, benchmark: str, args: argparse.Namespace) -> Layout:
    """The benchmark's ``01_raw``: annotations (copied or generated) and placeholder images."""
    raw = ws.raw(benchmark)
    source = annotation_source(args.annotations, benchmark)
    if source is None:
        cfg = PlaceholderConfig(
            scale=args.scale,
            train_queries=args.train_queries or PlaceholderConfig.train_queries,
            image_size=args.image_size,
            workers=args.workers,
        )
        shutil.rmtree(raw / "annotations", ignore_errors=True)
        return Layout("generated", write_benchmark(benchmark, raw, cfg))
    _copy_annotations(source, raw / "annotations")
    made = ADJUST[benchmark](raw / "annotations", args)
    block = registered(benchmark).source(
        {**_block_values(made.params, benchmark), "annotation_root": str(raw / "annotations")}
    )
    layout = registered(benchmark).layout(block)
    made.counts = write_layout_images(layout, raw / "images", args.image_size, args.workers)
    made.source = str(source)
    return made


def _block_values(params: dict[str, Any], benchmark: str) -> dict[str, Any]:
    prefix = f"data.{benchmark}."
    return {k.removeprefix(prefix): v for k, v in params.items() if k.startswith(prefix)}


# -- measuring ---------------------------------------------------------------------------
def _disk(path: Path) -> int:
    """Bytes a file takes on disk: its allocated blocks, as ``du`` counts them."""
    st = path.stat()
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def snapshot(ws: Workspace, benchmark: str) -> dict[str, tuple[int, float]]:
    """Every file a stage may write: relative path -> (disk bytes, mtime). The
    placeholder pictures are left out (no stage writes there)."""
    roots = [ws.data_root / benchmark, ws.work / "mlartifacts"]
    skip = ws.raw(benchmark) / "images"
    files: dict[str, tuple[int, float]] = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            if Path(folder) == skip.parent:
                dirs[:] = [d for d in dirs if d != skip.name]
            for name in names:
                path = Path(folder) / name
                try:
                    files[str(path.relative_to(ws.work))] = (_disk(path), path.stat().st_mtime)
                except FileNotFoundError:  # a temporary file gone meanwhile
                    continue
    return files


def output_group(rel: str, benchmark: str) -> str:
    """``data/<b>/04_feature/vit_cache/shard-0.npy`` -> ``04_feature/vit_cache``."""
    parts = Path(rel).parts
    if parts[:2] == ("data", benchmark):
        return "/".join(parts[2:4])
    return parts[0]


def disk_written(
    before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]], benchmark: str
) -> dict[str, int]:
    """Disk bytes of the files a stage created or changed, per output (largest first)."""
    groups: dict[str, int] = {}
    for rel, (size, mtime) in after.items():
        if before.get(rel) != (size, mtime):
            key = output_group(rel, benchmark)
            groups[key] = groups.get(key, 0) + size
    return dict(sorted(groups.items(), key=lambda kv: -kv[1]))


def stage_of(node: str) -> str:
    """``negative_mining.mine_initial_negatives`` -> ``mining`` (the node's namespace)."""
    namespace = node.split(".", 1)[0]
    return {pipeline: stage for stage, pipeline in (*STAGES, ZERO_SHOT)}.get(namespace, namespace)


def per_stage(
    nodes: dict[str, dict[str, float]], timeline: tuple[float, float, list[tuple[float, str]]]
) -> dict[str, dict[str, float]]:
    """Per stage of a multi-stage run: ``wall_s`` (from each node's previous node's end to
    its own, loading its inputs and saving its outputs included), ``node_s`` and ``save_s``
    (what the hooks timed: the node function and the saves of a second or more). The
    time after the last node (e.g. logging the MLflow model) is stage ``after_nodes``."""
    start, end, events = timeline
    stages: dict[str, dict[str, float]] = {}
    for node, values in nodes.items():
        into = stages.setdefault(stage_of(node), {"wall_s": 0.0, "node_s": 0.0, "save_s": 0.0})
        into["node_s"] += values.get("seconds", 0.0)
        into["save_s"] += values.get("save_seconds", 0.0)
    previous = start
    for when, node in events:
        stages[stage_of(node)]["wall_s"] += max(0.0, when - previous)
        previous = max(previous, when)
    stages["after_nodes"] = {"wall_s": max(0.0, end - previous), "node_s": 0.0, "save_s": 0.0}
    return stages


def measured(run: ChildRun, ws: Workspace, benchmark: str) -> dict[str, Any]:
    """The figures of one finished ``kedro run``."""
    run_id, metrics = latest_run(ws, benchmark)
    start, end, _ = node_timeline(ws, run_id)
    return {
        "command": " ".join(run.command[1:]),
        "log": str(run.log),
        "wall_s": run.seconds,
        "outside_mlflow_run_s": run.seconds - (end - start),  # process start-up and exit
        "peak_rss_gib": run.peak_rss_bytes / GIB,
        "mlflow_run_id": run_id,
        "nodes": node_resources(metrics),
    }


# -- the rehearsal -----------------------------------------------------------------------
def kedro_params(ws: Workspace, benchmark: str, args: argparse.Namespace) -> dict[str, Any]:
    """On top of ``conf/<benchmark>``: the work folder's data, the shipped tiny backbone,
    CPU, one epoch."""
    return {
        **ws.data_params(benchmark),
        "backbone.source": "pretrained",
        "backbone.name_or_path": str(ROOT / "models" / "tiny-blip2-synthetic"),
        "runtime.device": "cpu",
        "extraction.num_workers": args.workers,
        "training.loop.epochs": args.epochs,
    }


def clear_outputs(ws: Workspace, benchmark: str) -> None:
    """Remove an earlier rehearsal's stage outputs (the ``01_raw`` inputs stay)."""
    bench = ws.data_root / benchmark
    if bench.is_dir():
        for child in bench.iterdir():
            if child.name != "01_raw" and child.is_dir():
                shutil.rmtree(child)
    for file in ("benchmark_source.json",):
        (ws.raw(benchmark) / file).unlink(missing_ok=True)


def rehearse(ws: Workspace, benchmark: str, args: argparse.Namespace) -> dict[str, Any]:
    """Layout, every stage, the no-change re-run: the benchmark's part of the report."""
    clear_outputs(ws, benchmark)
    t0 = time.perf_counter()
    made = lay_out(ws, benchmark, args)
    layout_s = time.perf_counter() - t0
    params = {**kedro_params(ws, benchmark, args), **made.params}
    rep: dict[str, Any] = {
        "layout": {
            "source": made.source,
            "seconds": layout_s,
            "counts": made.counts,
            "notes": made.notes,
        },
        "params": params,
        "env": {k: ws.env()[k] for k in ("DQE_DATA_ROOT", "MLFLOW_TRACKING_URI")},
        "stages": {},
    }
    print(_layout_line(benchmark, rep["layout"]), flush=True)
    stages = STAGES if made.trainable else (*EVALUATE_ONLY, ZERO_SHOT)
    logs = ws.work / benchmark
    for stage, pipeline in stages:
        before = snapshot(ws, benchmark)
        run = run_kedro(ws, benchmark, pipeline, params, logs / f"{stage}.log")
        figures = {"pipeline": pipeline, **measured(run, ws, benchmark)}
        figures["outputs"] = disk_written(before, snapshot(ws, benchmark), benchmark)
        figures["disk_bytes"] = sum(figures["outputs"].values())
        rep["stages"][stage] = figures
        print(_stage_line(stage, figures), flush=True)
    if not args.no_rerun:
        pipeline = "train" if made.trainable else "zero_shot_full"
        run = run_kedro(ws, benchmark, pipeline, params, logs / "rerun.log")
        rerun = {"pipeline": pipeline, **measured(run, ws, benchmark)}
        rerun["stages"] = per_stage(rerun["nodes"], node_timeline(ws, rerun["mlflow_run_id"]))
        rep["rerun"] = rerun
        print(_rerun_line(rerun), flush=True)
    return rep


def _layout_line(benchmark: str, layout: dict[str, Any]) -> str:
    counts = layout["counts"]
    images = counts.get(
        "images", sum(v.get("images", 0) for v in counts.values() if isinstance(v, dict))
    )
    line = (
        f"== {benchmark}: layout from {layout['source']}: {images} images "
        f"({counts.get('images_written', 0)} written) in {layout['seconds']:.0f} s"
    )
    notes = "".join(f"\n   note: {n}" for n in layout["notes"])
    header = (
        f"\n   {'stage':<12}{'wall s':>8}{'in run s':>10}{'peak RSS GiB':>14}{'disk MiB':>10}"
        "  largest outputs"
    )
    return line + notes + header


def _stage_line(stage: str, figures: dict[str, Any]) -> str:
    largest = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in list(figures["outputs"].items())[:3])
    in_run = figures["wall_s"] - figures["outside_mlflow_run_s"]
    return (
        f"   {stage:<12}{figures['wall_s']:>8.1f}{in_run:>10.1f}{figures['peak_rss_gib']:>14.2f}"
        f"{figures['disk_bytes'] / 2**20:>10.1f}  {largest}"
    )


def _rerun_line(rerun: dict[str, Any]) -> str:
    per = "\n".join(
        f"      {stage:<12}{v['wall_s']:>8.1f} s  (node {v['node_s']:.1f} s, "
        f"save {v['save_s']:.1f} s)"
        for stage, v in rerun["stages"].items()
    )
    return (
        f"   no-change re-run (--pipelines {rerun['pipeline']}): {rerun['wall_s']:.1f} s "
        f"({rerun['outside_mlflow_run_s']:.1f} s of it starting and ending the process), "
        f"peak RSS {rerun['peak_rss_gib']:.2f} GiB; per stage:\n{per}"
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--benchmarks", nargs="+", default=["fashioniq", "cirr"], choices=["fashioniq", "cirr"]
    )
    ap.add_argument(
        "--annotations",
        nargs="*",
        default=[],
        help="DIR (holding <benchmark>/ or captions/ + image_splits/) or NAME=DIR",
    )
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "rehearsal")
    ap.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="generated annotations: of the real val/test sizes; also scales "
        "placeholder CIRR train captions",
    )
    ap.add_argument(
        "--train-queries",
        type=int,
        default=None,
        help="generated train triplets (default 1024) / placeholder CIRR train "
        f"captions (default {CIRR_TRAIN_QUERIES} x scale)",
    )
    ap.add_argument("--missing-captions", choices=["fill", "image-only"], default="fill")
    ap.add_argument("--image-size", type=int, default=64, help="placeholder picture side")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="picture writers and extraction decode workers",
    )
    ap.add_argument("--no-rerun", action="store_true", help="skip the no-change re-run")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """CLI (module docstring); writes ``<work>/rehearsal_report.json``."""
    args = _parser().parse_args(argv)
    ws = Workspace(args.work.resolve())
    report: dict[str, Any] = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "benchmarks": {},
    }
    out = ws.work / "rehearsal_report.json"
    for benchmark in args.benchmarks:
        report["benchmarks"][benchmark] = rehearse(ws, benchmark, args)
        atomic_write_json(out, report, sort_keys=False)  # what is done so far
    print(f"report: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
