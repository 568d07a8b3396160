"""Pre-flight check for a benchmark run: is everything in place before hours of GPU time?

Run it with the environment you are about to train with::

    python -m dqe_cir_pipeline.preflight --env fashioniq
    python -m dqe_cir_pipeline.preflight --env cirr --params "backbone.name_or_path=/models/blip2"
    python -m dqe_cir_pipeline.preflight --env fashioniq --skip-backbone   # no 4 GB load

It reads the project's parameters and catalog exactly as ``kedro run --env <env>`` does
(the project's ``settings.py``: config loader class, merge strategy, resolvers, so
``DQE_DATA_ROOT`` is honoured) and reports:

* **annotations**: every captions / image-split file the configured splits need (the
  benchmark's layout, the files its reader opens), present and valid JSON (read with the
  readers' own :func:`~dqe_cir_pipeline.data_sources.common.load_json`); a generated
  benchmark has nothing on disk to check yet (its registry entry's pre-flight rule);
* **images**: the fraction of images the split files reference that exist on disk
  (every image, not a sample: one directory listing per folder instead of one ``stat``
  per image), and the verdict ingestion will reach: the annotations are read by
  ingestion's own readers with its own settings (``data_sources.ingest.read_benchmark``)
  and judged by its own rule (``data_sources.common.rejection_problems``: per split and
  FashionIQ category), so a query dropped because one of its images is missing counts
  here as it will there; blocking when ingestion would fail. The image files are only
  looked up (``--image-check exists``); ``--image-check decode`` reads and decodes them
  as ingestion does (slower, and then exact for undecodable files too);
* **backbone**: whether ``backbone.name_or_path`` loads (the same
  :func:`~dqe_cir_pipeline.model.backbone.load_backbone` call the pipeline makes);
* **GPU**: presence and memory; blocking when ``runtime.device`` is ``cuda`` and none is
  visible;
* **disk**: free space where the ViT feature cache goes vs. what it needs: images x
  tokens x width x 2 bytes of the configured backbone (its ``config.json`` read without
  the weights, also with ``--skip-backbone``; the tiny preset from ``backbone.tiny``;
  BLIP-2 ViT-L/14: 257 x 1024, ViT-g/14: 257 x 1408). When the configuration cannot be
  read the size is unknown (a warning listing both), never another backbone's.

Exit code 0 when nothing blocking is missing, 1 otherwise, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dqe_cir_pipeline.config_loader import kedro_project_root, project_config_loader
from dqe_cir_pipeline.data_sources.common import (
    AnnotationError,
    load_json,
    reason_code,
    rejection_problems,
)
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.data_sources.image_check import IMAGE_CHECKS
from dqe_cir_pipeline.data_sources.ingest import read_benchmark
from dqe_cir_pipeline.data_sources.layout import SPLIT

logger = logging.getLogger(__name__)

#: Token grids (tokens, width) of the pretrained BLIP-2 towers at 224 px (16 x 16 patches
#: + [CLS]): the reference sizes shown when the configured backbone cannot be read.
REFERENCE_GRIDS = {"ViT-L/14 (pretrain_vitL)": (257, 1024), "ViT-g/14 (pretrain)": (257, 1408)}
CACHE_BYTES_PER_VALUE = 2  # the feature cache stores float16

PASS, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    """One line of the report.

    Attributes:
        name: What was checked (``annotations``, ``images``, ``backbone``, ...).
        status: ``ok``, ``warn`` (worth knowing, does not block) or ``FAIL`` (blocks).
        summary: One-line result.
        details: Extra lines (missing files, the loader's message, ...).
    """

    name: str
    status: str
    summary: str
    details: list[str] = field(default_factory=list)


@dataclass
class Report:
    """All checks of one pre-flight run, plus numbers the tests and callers read."""

    env: str
    benchmark: str
    checks: list[Check] = field(default_factory=list)
    numbers: dict[str, Any] = field(default_factory=dict)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    @property
    def blocking(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.blocking else 0

    def render(self) -> str:
        """Human-readable report (what ``main`` prints)."""
        lines = [f"pre-flight: env={self.env} benchmark={self.benchmark}", ""]
        for c in self.checks:
            lines.append(f"[{c.status:>4}] {c.name:<12} {c.summary}")
            lines.extend(f"         {d}" for d in c.details)
        lines.append("")
        if self.blocking:
            names = ", ".join(c.name for c in self.blocking)
            lines.append(f"NOT READY: {len(self.blocking)} blocking problem(s): {names}")
        else:
            lines.append("READY: nothing blocking found")
        return "\n".join(lines)


# --------------------------------------------------------------------------- config


def parse_params(text: str | None) -> dict[str, Any]:
    """``"a.b=1,c=x"`` -> ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML scalars).

    The same ``key=value`` syntax as ``kedro run --params``; a dotted key sets a nested
    parameter. Commas inside ``[...]`` / ``{...}`` or quotes do not split items, so list
    values work: ``data.cirr.image_only_splits=[train],runtime.device=cpu``.
    """
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in _split_top_level(text):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--params item {item!r} is not key=value")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value) if value.strip() else ""
    return out


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces or quotes."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


# --------------------------------------------------------------------------- data


class _DirListing:
    """Names in a folder, listed once (one ``scandir`` per folder, not a ``stat`` per file)."""

    def __init__(self) -> None:
        self._cache: dict[Path, frozenset[str]] = {}

    def __call__(self, folder: Path) -> frozenset[str]:
        if folder not in self._cache:
            try:
                with os.scandir(folder) as it:
                    self._cache[folder] = frozenset(e.name for e in it)
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                self._cache[folder] = frozenset()
        return self._cache[folder]


def check_data(data: DataConfig, report: Report, image_check: str = "exists") -> set[str]:
    """Annotation and image checks of the active benchmark's layout (the files its reader
    opens); returns the distinct image ids the splits reference.

    ``image_check`` is how the prediction of ingestion's verdict looks at each image
    (``exists``: only whether it is there; ``decode``: as ingestion does).
    """
    cfg = data.source
    layout = data.entry.layout(cfg)
    image_root = Path(cfg.image_root).absolute()
    specs = layout.files()
    missing: list[str] = []
    broken: list[str] = []
    records = 0
    files: dict[str, list[Path]] = {}
    for spec in specs:
        try:
            payload = load_json(spec.path)
            if spec.kind == SPLIT:
                files.update(layout.image_files(payload, image_root))
            elif isinstance(payload, list):
                records += len(payload)
            else:
                raise AnnotationError(f"{spec.path}: expected a list of caption records")
        except AnnotationError as err:
            (missing if "not found" in str(err) else broken).append(str(err))
    n_ok = len(specs) - len(missing) - len(broken)
    report.numbers.update(
        annotation_files=len(specs), annotation_files_ok=n_ok, caption_records=records
    )
    status = PASS if n_ok == len(specs) else FAIL
    report.add(
        Check(
            "annotations",
            status,
            f"{n_ok}/{len(specs)} files present and valid JSON under {cfg.annotation_root} "
            f"({records} caption records)",
            [*missing, *broken],
        )
    )

    listing = _DirListing()
    found = sum(any(p.name in listing(p.parent) for p in paths) for paths in files.values())
    total = len(files)
    fraction = found / total if total else 0.0
    report.numbers.update(
        images_referenced=total, images_found=found, images_found_fraction=fraction
    )
    details = []
    if found < total:
        absent = sorted(
            i for i, paths in files.items() if not any(p.name in listing(p.parent) for p in paths)
        )
        details.append(f"missing e.g.: {', '.join(absent[:5])}")
    summary = f"{found}/{total} referenced images found ({100 * fraction:.1f} %) under {image_root}"
    if total == 0:
        status, summary = FAIL, f"no image is referenced (image root {image_root})"
    elif n_ok < len(specs):
        status = PASS if found == total else WARN
        details.append("ingestion's verdict is predicted once every annotation file reads")
    else:
        status = predict_ingestion(data, report, details, image_check)
    report.add(Check("images", status, summary, details))
    return set(files)


def predict_ingestion(
    data: DataConfig, report: Report, details: list[str], image_check: str
) -> str:
    """Read the benchmark as ingestion will and judge it by ingestion's rule.

    Adds the predicted verdict, problems and quarantine counts to ``report.numbers``
    and the problems to ``details``.

    Returns:
        ``FAIL`` when ingestion would fail, ``WARN`` when it would quarantine
        something yet pass, ``ok`` when it would quarantine nothing.
    """
    source = data.source
    result = read_benchmark(
        {
            "dataset": data.benchmark,
            "annotation_root": source.annotation_root,
            "image_root": source.image_root,
        },
        data,
        image_check=image_check,
    )
    problems = rejection_problems(result, data.max_rejected_fraction)
    reasons: dict[str, int] = {}
    for reason in result.quarantine["reason"]:
        reasons[reason_code(reason)] = reasons.get(reason_code(reason), 0) + 1
    report.numbers.update(
        predicted_verdict="failed" if problems else "passed",
        predicted_problems=problems,
        predicted_quarantine=reasons,
    )
    if problems:
        details.append(
            f"ingestion will fail (data.max_rejected_fraction = {data.max_rejected_fraction:g} "
            "per split and category):"
        )
        details.extend(line for problem in problems for line in problem.splitlines())
        return FAIL
    if reasons:
        details.append(f"ingestion will pass, quarantining {reasons}")
        return WARN
    return PASS


# --------------------------------------------------------------------------- backbone


@dataclass(frozen=True)
class TokenGrid:
    """What the feature cache stores per image for the configured backbone."""

    tokens: int
    width: int
    label: str  # which backbone, for the report


def configured_grid(cfg: Any) -> TokenGrid | None:
    """The configured backbone's token grid from its configuration alone (no weights):
    the tiny preset's spec, or a pretrained folder's / cached hub id's ``config.json``;
    ``None`` when that cannot be read."""
    from dqe_cir_pipeline.model.backbone_info import configured_architecture

    if cfg.source == "tiny":
        spec = cfg.tiny
        tokens = (spec.image_size // spec.patch_size) ** 2 + 1
        return TokenGrid(tokens, spec.vision_hidden, "the tiny preset (backbone.source: tiny)")
    arch = configured_architecture(cfg.source, cfg.name_or_path, cfg.revision)
    if arch is None:
        return None
    tower = f"{arch['vision_tower']} depth {arch['vision_depth']}"
    label = f"{cfg.name_or_path} ({arch['arch']}, {tower})"
    return TokenGrid(arch["vision_tokens"], arch["vision_width"], label)


def _not_loaded(cfg: Any, err: Exception) -> list[str]:
    """The loader's message, plus how a missing folder is made from LAVIS's checkpoints
    (the real-data environments name a converted ``pretrain_vitL`` folder)."""
    details = str(err).splitlines()
    folder = Path(cfg.name_or_path).expanduser()
    if folder.is_absolute() and not folder.exists():
        details.append(
            "or, from LAVIS's checkpoints (the fashioniq / cirr default, BLIP-2 ViT-L), "
            "convert them once: dqe-cir-pipeline convert-lavis --arch pretrain_vitL "
            f"--qformer ... --vision ... --tokenizer ... --out {folder} (docs/real_data.md §11)"
        )
    return details


def check_backbone(
    backbone: dict[str, Any], report: Report, skip: bool = False
) -> TokenGrid | None:
    """Load the backbone; return the configured backbone's ViT token grid for the cache
    estimate (``None``: its configuration cannot be read)."""
    from dqe_cir_pipeline.model.backbone import BackboneConfig, BackboneNotFoundError, load_backbone

    cfg = BackboneConfig(**backbone)
    grid = configured_grid(cfg)
    if cfg.source == "tiny":
        report.add(Check("backbone", PASS, "tiny random preset (built on the first run)"))
        return grid
    if skip:
        report.add(Check("backbone", WARN, f"not loaded (--skip-backbone): {cfg.name_or_path}"))
        return grid
    try:
        bb = load_backbone(cfg)
    except BackboneNotFoundError as err:
        report.add(
            Check(
                "backbone",
                FAIL,
                f"backbone.name_or_path = {cfg.name_or_path!r} could not be loaded",
                _not_loaded(cfg, err),
            )
        )
        return grid
    from dqe_cir_pipeline.model.backbone_info import describe_architecture, token_grid

    tokens, dim = token_grid(bb.model.config.vision_config)
    local = Path(bb.name).expanduser()
    arch = describe_architecture(bb.model.config, cfg.source, local if local.is_dir() else None)
    n_params = sum(p.numel() for p in bb.model.parameters())
    report.add(
        Check(
            "backbone",
            PASS,
            f"{bb.name} loads ({n_params / 1e6:.0f} M parameters, key {bb.key}, {arch['arch']}, "
            f"{arch['vision_tower']} depth {arch['vision_depth']}, ViT tokens {tokens} x {dim})",
        )
    )
    del bb
    return TokenGrid(tokens, dim, f"{cfg.name_or_path} ({arch['arch']})")


# --------------------------------------------------------------------------- compute


def check_gpu(runtime: dict[str, Any], report: Report) -> None:
    """GPU presence and memory; blocking only when ``runtime.device`` demands CUDA."""
    import torch

    wanted = str(runtime.get("device", "auto"))
    if not torch.cuda.is_available():
        status = FAIL if wanted == "cuda" else WARN
        report.add(Check("gpu", status, f"no CUDA device visible (runtime.device = {wanted})"))
        report.numbers["gpus"] = 0
        return
    details = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        free, total = torch.cuda.mem_get_info(i)
        details.append(
            f"cuda:{i} {props.name}: {free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB"
        )
    report.numbers["gpus"] = torch.cuda.device_count()
    report.add(Check("gpu", PASS, f"{torch.cuda.device_count()} CUDA device(s)", details))


def _human(n_bytes: float) -> str:
    """Decimal units, as disks are sold: ``53.8 GB``."""
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n_bytes) < 1000:
            return f"{n_bytes:.1f} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"


def _existing(path: Path) -> Path:
    """The nearest existing ancestor (where ``disk_usage`` can be asked)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _folder_bytes(path: Path) -> int:
    if not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def check_disk(cache_dir: Path, n_images: int, grid: TokenGrid | None, report: Report) -> None:
    """Free space at the feature cache vs. ``n_images x tokens x width x 2`` bytes of the
    configured backbone; a warning (size unknown) when its configuration is unreadable."""
    have = _folder_bytes(cache_dir)
    free = shutil.disk_usage(_existing(cache_dir)).free
    where = f"{_human(free)} free at {_existing(cache_dir)}"
    report.numbers.update(cache_bytes_present=have, disk_bytes_free=free)
    if grid is None:
        report.numbers["cache_bytes_needed"] = None
        sizes = [
            f"{name}: {_human(n_images * t * w * CACHE_BYTES_PER_VALUE)} ({t} x {w})"
            for name, (t, w) in REFERENCE_GRIDS.items()
        ]
        report.add(
            Check(
                "disk",
                WARN,
                f"feature cache size unknown: the configured backbone's configuration could "
                f"not be read; {where}",
                [f"{n_images} images would need, with {s}" for s in sizes]
                + [f"cache folder: {cache_dir}"],
            )
        )
        return
    need = n_images * grid.tokens * grid.width * CACHE_BYTES_PER_VALUE
    remaining = max(0, need - have)
    report.numbers.update(cache_bytes_needed=need, cache_tokens=grid.tokens, cache_width=grid.width)
    summary = (
        f"feature cache needs {_human(need)} ({n_images} images x {grid.tokens} tokens x "
        f"{grid.width} wide x 2 B), {_human(have)} already cached; {where}"
    )
    details = [f"backbone: {grid.label}", f"cache folder: {cache_dir}"]
    report.add(Check("disk", PASS if free >= remaining else FAIL, summary, details))


# --------------------------------------------------------------------------- entry


def run_checks(
    env: str,
    project_path: Path,
    runtime_params: dict[str, Any] | None = None,
    skip_backbone: bool = False,
    image_check: str = "exists",
) -> Report:
    """Run every check for ``env`` and return the report (prints nothing).

    The parameters and catalog are the ones ``kedro run --env <env>`` would use
    (:func:`~dqe_cir_pipeline.config_loader.project_config_loader`); ``image_check``
    is passed to :func:`check_data`.
    """
    loader = project_config_loader(env, project_path, runtime_params)
    params, catalog = dict(loader["parameters"]), dict(loader["catalog"])
    data = DataConfig(**params["data"])
    report = Report(env=env, benchmark=data.benchmark)
    image_ids: set[str] = set()
    rule = data.entry.preflight
    if rule.check_files:
        image_ids = check_data(data, report, image_check)
    else:
        report.add(Check("data", PASS, rule.note))
    grid = check_backbone(params["backbone"], report, skip=skip_backbone)
    check_gpu(params.get("runtime", {}), report)
    if image_ids:
        cache_dir = Path(catalog["vit_features"]["filepath"])
        check_disk(cache_dir, len(image_ids), grid, report)
    return report


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m dqe_cir_pipeline.preflight",
        description="Check data, weights, GPU and disk before `kedro run --env <env>`.",
    )
    ap.add_argument("--env", default="fashioniq", help="Kedro environment (fashioniq, cirr, ...)")
    ap.add_argument("--params", default=None, help='overrides as in kedro run: "a.b=1,c=x"')
    ap.add_argument(
        "--project-path", type=Path, default=None, help="project root (default: the current one)"
    )
    ap.add_argument(
        "--skip-backbone", action="store_true", help="do not load the pretrained weights"
    )
    ap.add_argument(
        "--image-check",
        choices=IMAGE_CHECKS,
        default="exists",
        help="how images are checked when predicting ingestion's verdict (default: exists; "
        "decode: as ingestion does, slower)",
    )
    return ap.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> int:
    """CLI entry point: print the report, return the exit code."""
    args = _parse_args(list(argv) if argv is not None else None)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    project_path = (args.project_path or kedro_project_root()).resolve()
    try:
        report = run_checks(
            args.env, project_path, parse_params(args.params), args.skip_backbone, args.image_check
        )
    except (KeyError, ValueError, TypeError) as err:
        print(f"pre-flight: configuration error for env {args.env!r}: {err}", file=sys.stderr)
        return 2
    print(report.render())
    return report.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
