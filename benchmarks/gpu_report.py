"""The one Python entry point of a GPU run (``gpu_run.sh`` calls it for every step).

Subcommands:

``device``
    The device figures: bf16 matmul peak, ViT-g extraction (model-only and end to end,
    MFU), the cached vs recompute training step (bare and end to end), mining at 20k x
    20k and target ranks at 6k x 6k, each section time-boxed (``_device_figures.py``).
    Needs torch and transformers only, no Kedro.
``smoke``
    The real-data path through ``kedro run --env cirr|fashioniq --pipelines train`` on
    placeholder data with a full-size random BLIP-2: seconds and peak memory per node,
    extraction, training and evaluation rates (``_real_data_smoke.py``). Needs the
    project installed (Kedro, kedro-mlflow).
``requirements``
    ``requirements.txt`` (the project's dependencies without torch, which the GPU
    machine has as a CUDA build) and ``constraints.txt`` pinning the installed torch
    family, so that pip can never replace it. Plain Python.
``assemble``
    Reads the outputs of the other steps and writes ``gpu_smoke_<device>.json``: the
    end-to-end over model-only extraction ratio, the cached over recompute end-to-end
    training ratio, the model-only MFU, the negative-refresh time, peak GPU memory and
    seconds per node, seconds per step, and each target with whether it was met.
    Plain Python.

Run from the repository root (``PYTHONPATH=src`` is not needed: the script puts ``src``
first on its path)::

    python benchmarks/gpu_report.py device --out /tmp/gpu/device.json
    python benchmarks/gpu_report.py device --tiny --device cpu      # CPU check, ~40 s
    python benchmarks/gpu_report.py smoke --benchmarks cirr --scale 0.25
    python benchmarks/gpu_report.py smoke --size tiny --device cpu --scale 0.01 \\
        --train-queries 48 --image-size 48 --workers 2 --extraction-batch 64
    python benchmarks/gpu_report.py requirements --out-dir /tmp/gpu
    python benchmarks/gpu_report.py assemble --device-figures device.json \\
        --smoke cirr=smoke_cirr.json --smoke fashioniq=smoke_fashioniq.json \\
        --host-feed host_feed.json --steps steps.tsv --out-dir docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: Distributions never replaced on the GPU machine (its CUDA build of torch and friends).
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton", "pytorch-triton")

#: The GPU path's targets (docs/gpu.md): (figure, threshold, "min" = at least / "max" = at most).
TARGETS: dict[str, tuple[float, str]] = {
    "extraction_end_to_end_over_model_only": (0.85, "min"),
    "mfu_model_only": (0.60, "min"),
    "cached_over_recompute_end_to_end": (3.5, "min"),
    "negative_refresh_20k_s": (1.0, "max"),
}


# -- requirements ------------------------------------------------------------------------
def _name(requirement: str) -> str:
    """Normalised distribution name of a requirement (``Kedro_Viz>=1`` -> ``kedro-viz``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def project_dependencies(pyproject: Path) -> list[str]:
    """``[project].dependencies`` of a ``pyproject.toml``."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    return list(data["project"]["dependencies"])


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or ``None``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install_lists(
    dependencies: Sequence[str],
    installed: dict[str, str | None],
    exclude: Sequence[str] = (),
) -> tuple[list[str], list[str]]:
    """Requirements to install and constraints that keep the machine's torch.

    Args:
        dependencies: the project's requirement strings.
        installed: distribution name -> installed version (``None`` if absent), at
            least for the torch family.
        exclude: further distribution names not to install (e.g. ``kedro-viz``).

    Returns:
        ``(requirements, constraints)``: the requirements without the torch family and
        ``exclude``; ``name==version`` for each installed torch-family distribution
        (other installed packages may be upgraded or downgraded by pip as the project
        needs: pinning them could make the resolution impossible).
    """
    skip = {_name(n) for n in (*TORCH_FAMILY, *exclude)}
    requirements = [r for r in dependencies if _name(r) not in skip]
    constraints = []
    for name in TORCH_FAMILY:
        version = installed.get(name)
        if version:
            constraints.append(f"{name}=={version}")
    return requirements, constraints


# -- assemble ----------------------------------------------------------------------------
def device_slug(name: str) -> str:
    """File-name form of a device name: ``NVIDIA H200`` -> ``h200``."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower().replace("nvidia", "")).strip("_")
    return slug or "unknown"


def _ratio(num: Any, den: Any) -> float | None:
    if not isinstance(num, (int, float)) or not isinstance(den, (int, float)) or den <= 0:
        return None
    value = float(num) / float(den)
    return value if math.isfinite(value) else None


def read_steps(path: Path | None) -> dict[str, dict[str, Any]]:
    """The script's step log: ``name<TAB>seconds<TAB>exit status<TAB>time box`` per line."""
    steps: dict[str, dict[str, Any]] = {}
    if path is None or not path.is_file():
        return steps
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        name, seconds, status, box = parts
        steps[name] = {
            "seconds": float(seconds),
            "exit": int(status) if status.lstrip("-").isdigit() else status,
            "time_box_s": float(box),
        }
    return steps


def smoke_summary(report: dict[str, Any], model_only: float | None) -> dict[str, Any]:
    """Per benchmark of one ``smoke_report.json``: memory and seconds per node, rates."""
    out: dict[str, Any] = {}
    for benchmark, rep in report.get("benchmarks", {}).items():
        nodes = rep.get("nodes", {})
        extraction = rep.get("extraction", {}).get("images_per_s")
        out[benchmark] = {
            "peak_gpu_gib_per_node": {
                n: v["peak_gpu_gib"] for n, v in nodes.items() if "peak_gpu_gib" in v
            },
            "peak_rss_gib_per_node": {
                n: v["peak_rss_gib"] for n, v in nodes.items() if "peak_rss_gib" in v
            },
            "seconds_per_node": {
                n: {"run": v.get("seconds"), "save": v.get("save_seconds")}
                for n, v in nodes.items()
            },
            "kedro_seconds": rep.get("kedro_seconds"),
            "data_seconds": rep.get("data_seconds"),
            "extraction_images_per_s": extraction,
            "extraction_over_device_model_only": _ratio(extraction, model_only),
            "training_triplets_per_s": rep.get("training", {}).get("triplets_per_s_last_epoch"),
            "mining_seconds": rep.get("training", {}).get("mining_seconds"),
            "evaluation_queries_per_s": rep.get("evaluation", {}).get("queries_per_s"),
            "data": rep.get("data"),
        }
    return out


def _device_ratios(device_figures: dict[str, Any] | None) -> dict[str, Any]:
    """The GPU path's ratios and the rates behind them, from the device figures' sections."""
    sections = (device_figures or {}).get("sections", {})
    ext = sections.get("b_extraction", {})
    train = sections.get("c_training_step", {})
    mining = sections.get("d_mining", {})
    model_only = ext.get("model_only_images_per_s")
    recompute = train.get("e2e_recompute_triplets_per_s")
    cached = train.get("e2e_cached_prefetch_triplets_per_s", train.get("e2e_cached_triplets_per_s"))
    return {
        "extraction_end_to_end_over_model_only": _ratio(ext.get("e2e_images_per_s"), model_only),
        "cached_over_recompute_end_to_end": _ratio(cached, recompute),
        "cached_over_recompute_end_to_end_in_loop_gather": _ratio(
            train.get("e2e_cached_triplets_per_s"), recompute
        ),
        "cached_over_recompute_bare": train.get("bare_speedup_cached_over_recompute"),
        "mfu_model_only": ext.get("model_only_mfu"),
        "mfu_end_to_end": ext.get("e2e_mfu"),
        "negative_refresh_20k_s": mining.get("mining_s")
        if mining.get("mining_shape", "").startswith("20000x20000")
        else None,
        "rates": {
            "peak_tflops": sections.get("a_matmul_peak", {}).get("peak_tflops"),
            "extraction_model_only_images_per_s": model_only,
            "extraction_end_to_end_images_per_s": ext.get("e2e_images_per_s"),
            "cached_bare_triplets_per_s": train.get("bare_cached_triplets_per_s"),
            "cached_end_to_end_triplets_per_s": cached,
            "recompute_bare_triplets_per_s": train.get("bare_recompute_triplets_per_s"),
            "recompute_end_to_end_triplets_per_s": recompute,
        },
        "device_status": {k: v.get("status") for k, v in sections.items()},
    }


def _host_feed_summary(host_feed: dict[str, Any]) -> dict[str, Any]:
    return {
        "verdicts": host_feed.get("verdicts"),
        "decode_jpeg_per_core_images_per_s": host_feed.get("decode", {})
        .get("jpeg", {})
        .get("per_core_images_per_s"),
        "gather_warm_gb_per_s": host_feed.get("gather", {}).get("warm_gb_per_s"),
        "gather_cold_gb_per_s": host_feed.get("gather", {}).get("cold_gb_per_s"),
        "writer_gb_per_s": host_feed.get("writer", {}).get("gb_per_s"),
        "cuda": host_feed.get("cuda"),
    }


def _targets_and_missing(
    doc: dict[str, Any],
    device_figures: dict[str, Any] | None,
    smoke_reports: dict[str, dict[str, Any] | None],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Each target with its value and whether it was met; what could not be computed."""
    targets: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for key, (threshold, kind) in TARGETS.items():
        value = doc[key]
        met = (
            None if value is None else (value >= threshold if kind == "min" else value <= threshold)
        )
        targets[key] = {"value": value, "target": threshold, "kind": kind, "met": met}
    for key in (*TARGETS, "cached_over_recompute_bare"):
        if doc[key] is None:
            missing[key] = "device figures absent" if device_figures is None else "section not ok"
    mining = (device_figures or {}).get("sections", {}).get("d_mining", {})
    if mining.get("mining_shape") and doc["negative_refresh_20k_s"] is None:
        missing["negative_refresh_20k_s"] = f"mining measured at {mining['mining_shape']} only"
    for name, report in smoke_reports.items():
        if report is None:
            missing[f"smoke.{name}"] = "the smoke run wrote no report (see its log)"
    if not doc["peak_gpu_gib_per_node"] or not any(doc["peak_gpu_gib_per_node"].values()):
        missing["peak_gpu_gib_per_node"] = "no smoke run on CUDA reported GPU memory"
    return targets, missing


def assemble(
    device_figures: dict[str, Any] | None,
    smoke_reports: dict[str, dict[str, Any] | None],
    host_feed: dict[str, Any] | None,
    steps: dict[str, dict[str, Any]],
    device: str | None = None,
) -> dict[str, Any]:
    """The figures of one GPU run, from the outputs of its steps.

    Args:
        device_figures: the ``device`` step's JSON (``None`` if that step failed).
        smoke_reports: benchmark -> its ``smoke_report.json`` (``None`` if it failed).
        host_feed: ``bench_host_feed.py --out`` JSON (``None`` if absent).
        steps: the step timings (:func:`read_steps`).
        device: device name; default the one the device figures or a smoke report
            recorded.

    Returns:
        The JSON document. A figure that could not be computed is ``None`` and listed
        under ``missing`` with the reason.
    """
    if device is None:
        device = (device_figures or {}).get("env", {}).get("gpu")
        for rep in smoke_reports.values():
            device = device or (rep or {}).get("device")
    doc: dict[str, Any] = {"device": device or "unknown", **_device_ratios(device_figures)}
    doc.update(
        {
            "smoke": {},
            "smoke_status": {},
            "seconds_per_step": {k: v["seconds"] for k, v in steps.items()},
            "steps": steps,
        }
    )
    model_only = doc["rates"]["extraction_model_only_images_per_s"]
    for name, report in smoke_reports.items():
        doc["smoke_status"][name] = "no report" if report is None else "ok"
        if report is not None:
            doc["smoke"].update(smoke_summary(report, model_only))
    doc["peak_gpu_gib_per_node"] = {b: s["peak_gpu_gib_per_node"] for b, s in doc["smoke"].items()}
    doc["seconds_per_node"] = {b: s["seconds_per_node"] for b, s in doc["smoke"].items()}
    if host_feed is not None:
        doc["host_feed"] = _host_feed_summary(host_feed)
    doc["targets"], doc["missing"] = _targets_and_missing(doc, device_figures, smoke_reports)
    return doc


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


# -- command line ------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("device", help="device figures (no Kedro needed)")
    dev.add_argument("--tiny", action="store_true", help="tiny sizes: a CPU check, seconds")
    dev.add_argument("--device", default="auto", help="auto | cpu | cuda")
    dev.add_argument("--budget", type=float, default=330.0, help="global seconds, all sections")
    dev.add_argument("--workers", type=int, default=None, help="DataLoader decode workers")
    dev.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    smk = sub.add_parser("smoke", help="the real-data path through Kedro")
    smk.add_argument("--work", type=Path, default=HERE.parent / "data" / "smoke")
    smk.add_argument(
        "--benchmarks", nargs="+", default=["cirr", "fashioniq"], choices=["cirr", "fashioniq"]
    )
    smk.add_argument("--size", choices=["full", "tiny"], default="full", help="backbone shapes")
    smk.add_argument("--device", default="cuda", help="cuda | cpu | auto")
    smk.add_argument("--scale", type=float, default=1.0, help="of the real val/test sizes")
    smk.add_argument("--train-queries", type=int, default=1024)
    smk.add_argument("--image-size", type=int, default=256, help="placeholder image side")
    smk.add_argument("--epochs", type=int, default=2)
    smk.add_argument("--batch-size", type=int, default=32)
    smk.add_argument("--extraction-batch", type=int, default=256)
    smk.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    req = sub.add_parser("requirements", help="requirements.txt and constraints.txt")
    req.add_argument("--pyproject", type=Path, default=HERE.parent / "pyproject.toml")
    req.add_argument("--out-dir", type=Path, required=True)
    req.add_argument("--exclude", nargs="*", default=[], help="distributions not to install")
    asm = sub.add_parser("assemble", help="gpu_smoke_<device>.json")
    asm.add_argument("--device-figures", type=Path)
    asm.add_argument("--smoke", action="append", default=[], help="benchmark=path (repeat)")
    asm.add_argument("--host-feed", type=Path)
    asm.add_argument("--steps", type=Path)
    asm.add_argument("--device", default=None)
    asm.add_argument("--out-dir", type=Path, action="append", required=True, help="repeatable")
    return ap


def _write_requirements(args: argparse.Namespace) -> None:
    deps = project_dependencies(args.pyproject)
    installed = {n: installed_version(n) for n in TORCH_FAMILY}
    requirements, constraints = install_lists(deps, installed, args.exclude)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (args.out_dir / "constraints.txt").write_text("\n".join(constraints) + "\n")
    print(f"{len(requirements)} requirements, constraints: {', '.join(constraints)}")


def _write_assembled(args: argparse.Namespace) -> None:
    smoke: dict[str, dict[str, Any] | None] = {}
    for item in args.smoke:
        name, _, path = item.partition("=")
        smoke[name] = _load(Path(path))
    doc = assemble(
        _load(args.device_figures),
        smoke,
        _load(args.host_feed),
        read_steps(args.steps),
        args.device,
    )
    name = f"gpu_smoke_{device_slug(doc['device'])}.json"
    for folder in dict.fromkeys(args.out_dir):  # each folder once
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {folder / name}")
    for key, t in doc["targets"].items():
        print(f"  {key:<42} {t['value']!s:>24}  target {t['kind']} {t['target']}  met: {t['met']}")
    if doc["missing"]:
        print(f"  missing: {doc['missing']}")


def _use_checkout() -> None:
    """Put the sibling modules, and this checkout's package before any installed copy,
    on the import path."""
    for path in (HERE.parent / "src", HERE):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``device``, ``smoke``, ``requirements`` or ``assemble`` (module docstring)."""
    args = _parser().parse_args(argv)
    if args.command in ("device", "smoke"):
        _use_checkout()
    if args.command == "device":  # torch and the model only from here on
        from _device_figures import device_figures

        device_figures(
            tiny=args.tiny,
            device=args.device,
            budget_s=args.budget,
            workers=args.workers,
            out=args.out,
        )
    elif args.command == "smoke":  # needs Kedro and kedro-mlflow installed
        from _real_data_smoke import run_smoke

        run_smoke(args)
    elif args.command == "requirements":
        _write_requirements(args)
    else:
        _write_assembled(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
