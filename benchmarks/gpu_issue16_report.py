"""Helpers of ``benchmarks/gpu_issue16.sh``: install lists, and the one JSON of the GPU run.

Two subcommands, plain Python (no torch, no Kedro, so they run before the install and on
any machine):

``requirements``
    Reads ``pyproject.toml`` and writes ``requirements.txt`` (the project's dependencies
    without torch, which the GPU machine already has as a CUDA build) and
    ``constraints.txt`` pinning the installed torch family (torch, torchvision,
    torchaudio, triton), so that pip can never replace the CUDA build.

``assemble``
    Reads ``gpu_bench.py``'s JSON, the ``gpu_smoke.py`` reports (one per benchmark),
    ``host_feed.py``'s JSON and the script's step timings, and writes
    ``gpu_smoke_<device>.json`` with the issue-16 figures: the end-to-end over
    model-only extraction ratio, the cached over recompute end-to-end training ratio,
    the model-only MFU, the negative-refresh time, peak GPU memory and seconds per node,
    seconds per script step, and each target with whether it was met.

Usage::

    python benchmarks/gpu_issue16_report.py requirements --out-dir /tmp/dqe_issue16
    python benchmarks/gpu_issue16_report.py assemble --gpu-bench gpu_bench.json \\
        --smoke cirr=smoke_cirr.json --smoke fashioniq=smoke_fashioniq.json \\
        --host-feed host_feed.json --steps steps.tsv --out-dir docs/figures
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions never replaced on the GPU machine (its CUDA build of torch and friends).
TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton", "pytorch-triton")

#: The issue's targets: (figure, threshold, "min" = at least / "max" = at most).
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
            "extraction_over_gpu_bench_model_only": _ratio(extraction, model_only),
            "training_triplets_per_s": rep.get("training", {}).get("triplets_per_s_last_epoch"),
            "mining_seconds": rep.get("training", {}).get("mining_seconds"),
            "evaluation_queries_per_s": rep.get("evaluation", {}).get("queries_per_s"),
            "data": rep.get("data"),
        }
    return out


def assemble(
    gpu_bench: dict[str, Any] | None,
    smoke_reports: dict[str, dict[str, Any] | None],
    host_feed: dict[str, Any] | None,
    steps: dict[str, dict[str, Any]],
    device: str | None = None,
) -> dict[str, Any]:
    """The issue-16 figures of one GPU run, from the outputs of its steps.

    Args:
        gpu_bench: ``gpu_bench.py --out`` JSON (``None`` if that step failed).
        smoke_reports: benchmark -> its ``smoke_report.json`` (``None`` if it failed).
        host_feed: ``host_feed.py --out`` JSON (``None`` if absent).
        steps: the script's step timings (:func:`read_steps`).
        device: device name; default the one ``gpu_bench`` or a smoke report recorded.

    Returns:
        The JSON document. A figure that could not be computed is ``None`` and listed
        under ``missing`` with the reason.
    """
    sections = (gpu_bench or {}).get("sections", {})
    ext = sections.get("b_extraction", {})
    train = sections.get("c_training_step", {})
    mining = sections.get("d_mining", {})
    model_only = ext.get("model_only_images_per_s")
    recompute = train.get("e2e_recompute_triplets_per_s")
    cached = train.get("e2e_cached_prefetch_triplets_per_s", train.get("e2e_cached_triplets_per_s"))
    if device is None:
        device = (gpu_bench or {}).get("env", {}).get("gpu")
        for rep in smoke_reports.values():
            device = device or (rep or {}).get("device")
    device = device or "unknown"

    doc: dict[str, Any] = {
        "device": device,
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
        "gpu_bench_status": {k: v.get("status") for k, v in sections.items()},
        "smoke": {},
        "smoke_status": {},
        "seconds_per_step": {k: v["seconds"] for k, v in steps.items()},
        "steps": steps,
    }
    for name, report in smoke_reports.items():
        if report is None:
            doc["smoke_status"][name] = "no report"
            continue
        doc["smoke_status"][name] = "ok"
        doc["smoke"].update(smoke_summary(report, model_only))
    doc["peak_gpu_gib_per_node"] = {b: s["peak_gpu_gib_per_node"] for b, s in doc["smoke"].items()}
    doc["seconds_per_node"] = {b: s["seconds_per_node"] for b, s in doc["smoke"].items()}
    if host_feed is not None:
        doc["host_feed"] = {
            "verdicts": host_feed.get("verdicts"),
            "decode_jpeg_per_core_images_per_s": host_feed.get("decode", {})
            .get("jpeg", {})
            .get("per_core_images_per_s"),
            "gather_warm_gb_per_s": host_feed.get("gather", {}).get("warm_gb_per_s"),
            "gather_cold_gb_per_s": host_feed.get("gather", {}).get("cold_gb_per_s"),
            "writer_gb_per_s": host_feed.get("writer", {}).get("gb_per_s"),
            "cuda": host_feed.get("cuda"),
        }

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
            missing[key] = "gpu_bench.json absent" if gpu_bench is None else "section not ok"
    if mining.get("mining_shape") and doc["negative_refresh_20k_s"] is None:
        missing["negative_refresh_20k_s"] = f"mining measured at {mining['mining_shape']} only"
    for name, report in smoke_reports.items():
        if report is None:
            missing[f"smoke.{name}"] = "gpu_smoke.py wrote no report (see its log)"
    if not doc["peak_gpu_gib_per_node"] or not any(doc["peak_gpu_gib_per_node"].values()):
        missing["peak_gpu_gib_per_node"] = "no smoke run on CUDA reported GPU memory"
    doc["targets"] = targets
    doc["missing"] = missing
    return doc


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``requirements`` or ``assemble`` (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    req = sub.add_parser("requirements", help="requirements.txt and constraints.txt")
    req.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    req.add_argument("--out-dir", type=Path, required=True)
    req.add_argument("--exclude", nargs="*", default=[], help="distributions not to install")
    asm = sub.add_parser("assemble", help="gpu_smoke_<device>.json")
    asm.add_argument("--gpu-bench", type=Path)
    asm.add_argument("--smoke", action="append", default=[], help="benchmark=path (repeat)")
    asm.add_argument("--host-feed", type=Path)
    asm.add_argument("--steps", type=Path)
    asm.add_argument("--device", default=None)
    asm.add_argument("--out-dir", type=Path, action="append", required=True, help="repeatable")
    args = ap.parse_args(argv)

    if args.command == "requirements":
        deps = project_dependencies(args.pyproject)
        installed = {n: installed_version(n) for n in TORCH_FAMILY}
        requirements, constraints = install_lists(deps, installed, args.exclude)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
        (args.out_dir / "constraints.txt").write_text("\n".join(constraints) + "\n")
        print(f"{len(requirements)} requirements, constraints: {', '.join(constraints)}")
        return 0

    smoke: dict[str, dict[str, Any] | None] = {}
    for item in args.smoke:
        name, _, path = item.partition("=")
        smoke[name] = _load(Path(path))
    doc = assemble(
        _load(args.gpu_bench), smoke, _load(args.host_feed), read_steps(args.steps), args.device
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
