"""Writing: the benchmark's PNGs, captions, split maps and manifest, atomically.

``generate_folder`` is the shared write-or-reuse step of every generated data folder
(this benchmark and the description corpus).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dqe_cir_pipeline.data_sources.synthetic.ambiguous_split import build_ambiguous_split
from dqe_cir_pipeline.data_sources.synthetic.config import (
    FORMAT_VERSION,
    GENERATOR_NAME,
    SPLITS,
    SyntheticConfig,
)
from dqe_cir_pipeline.data_sources.synthetic.families import (
    Variant,
    build_family,
    family_records,
)
from dqe_cir_pipeline.data_sources.synthetic.rendering import render_scene
from dqe_cir_pipeline.data_sources.synthetic.scenes import Scene

logger = logging.getLogger(__name__)

#: Threads that render and write PNGs: rendering, PNG encoding and file creation release
#: the GIL most of the time, and each image depends only on its own variant.
IO_THREADS = 4


def write_json(path: Path, payload: Any) -> None:
    """Write JSON deterministically with sorted keys, one list element or dict entry a line.

    Not ``indent``: it switches ``json`` to its pure-Python encoder (~3 s more).
    """
    if isinstance(payload, list):
        lines = [json.dumps(item, sort_keys=True) for item in payload]
        text = "[\n" + ",\n".join(lines) + "\n]\n"
    elif isinstance(payload, dict) and all(isinstance(k, str) for k in payload):
        lines = [
            f"{json.dumps(k)}: {json.dumps(payload[k], sort_keys=True)}" for k in sorted(payload)
        ]
        text = "{\n" + ",\n".join(lines) + "\n}\n"
    else:
        text = json.dumps(payload, sort_keys=True) + "\n"
    path.write_text(text, encoding="utf-8")


def read_manifest(root: Path) -> dict[str, Any] | None:
    """Return the parsed manifest of ``root`` or None when absent / unreadable."""
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_image(directory: Path, var: Variant, cfg: SyntheticConfig) -> None:
    """Render one family member and write it as ``<directory>/<name>.png``."""
    image = render_scene(var.objects, var.background, cfg.image_size, var.offsets, cfg.supersample)
    image.save(directory / f"{var.name}.png", format="PNG", compress_level=cfg.png_compress_level)


def _unique_split(
    cfg: SyntheticConfig,
    split: str,
    first_family_id: int,
    first_pairid: int,
    used_bases: set[Scene],
    emit: Callable[[list[Variant]], None],
) -> tuple[list[Variant], list[dict[str, Any]], dict[str, Any]]:
    """The unique tier's split: one record per variant, each with its one target."""
    s_idx = SPLITS.index(split)
    images: list[Variant] = []
    records: list[dict[str, Any]] = []
    for index in range(_n_families(cfg, split)):
        variants = build_family(cfg, split, index, first_family_id + index, used_bases)
        emit(variants)
        images += variants
        pairid = first_pairid + len(records)
        records += family_records(cfg, variants, pairid, (cfg.seed, s_idx, index))
    return images, records, {}


def _ambiguous_split(
    tmp: Path,
    cfg: SyntheticConfig,
    split: str,
    first_family_id: int,
    first_pairid: int,
    used_bases: set[Scene],
    emit: Callable[[list[Variant]], None],
) -> tuple[list[Variant], list[dict[str, Any]], dict[str, Any]]:
    """The ambiguous tier's split; also writes ``scenes/scene.<split>.json`` (labels)."""
    n = _n_families(cfg, split)
    built = build_ambiguous_split(cfg, split, n, first_family_id, first_pairid, used_bases, emit)
    (tmp / "scenes").mkdir(exist_ok=True)
    write_json(tmp / "scenes" / f"scene.{split}.json", built.scenes)
    return built.variants, built.records, {"valid_targets": built.stats}


def _n_families(cfg: SyntheticConfig, split: str) -> int:
    """Number of families of ``split`` (``<split>_families``)."""
    return int(getattr(cfg, f"{split}_families"))


def _generate_into(tmp: Path, cfg: SyntheticConfig) -> dict[str, Any]:
    """Write the whole benchmark into the fresh directory ``tmp``; return the summary."""
    (tmp / "captions").mkdir(parents=True)
    (tmp / "image_splits").mkdir()
    used_bases: set[Scene] = set()
    pairid = 0
    family_id = 0
    summary: dict[str, Any] = {"splits": {}}
    total_types: Counter[str] = Counter()
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        pending: list[Future[None]] = []
        for split in SPLITS:
            n_families = _n_families(cfg, split)
            if n_families == 0:
                continue  # only test may be empty: no files, no summary entry
            (tmp / split).mkdir()

            def emit(variants: list[Variant], directory: Path = tmp / split) -> None:
                pending.extend(pool.submit(_write_image, directory, v, cfg) for v in variants)

            if cfg.tier == "ambiguous":
                args = (tmp, cfg, split, family_id, pairid, used_bases, emit)
                images, records, extra = _ambiguous_split(*args)
            else:
                images, records, extra = _unique_split(
                    cfg, split, family_id, pairid, used_bases, emit
                )
            split_map = {var.name: f"./{split}/{var.name}.png" for var in images}
            pairid += len(records)
            family_id += n_families
            write_json(tmp / "captions" / f"cap.{split}.json", records)
            write_json(tmp / "image_splits" / f"split.{split}.json", split_map)
            types = Counter(r["edit"]["type"] for r in records)
            total_types.update(types)
            summary["splits"][split] = {
                "families": n_families,
                "images": len(split_map),
                "triplets": len(records),
                "edit_types": dict(sorted(types.items())),
                **extra,
            }
        for future in pending:
            future.result()  # re-raise the first rendering / writing error, if any
    summary["edit_types"] = dict(sorted(total_types.items()))
    summary["images"] = sum(s["images"] for s in summary["splits"].values())
    summary["triplets"] = sum(s["triplets"] for s in summary["splits"].values())
    if cfg.tier != "unique":
        summary["tier"] = cfg.tier
    return summary


def generate_folder(
    root: str | Path,
    identity: dict[str, Any],
    write: Callable[[Path], dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """Write a generated data folder atomically, or reuse it when nothing changed.

    ``root/manifest.json`` records ``identity`` (the generator's name, format version and
    settings hash, ...). When it matches, nothing is written; else ``write`` fills a
    fresh temporary sibling folder, the manifest (``identity``, ``extra`` and the summary
    ``write`` returns) is added, and the folder replaces ``root`` with ``os.replace``: an
    interrupted run leaves at most a ``.<name>.tmp-*`` sibling behind. An existing
    ``root`` is only replaced when it is empty or its manifest names the same generator.

    Returns:
        The summary (from the manifest when reused) and whether it was reused.

    Raises:
        FileExistsError: ``root`` is a non-empty directory another generator (or
            nothing of ours) wrote.
    """
    root = Path(root).resolve()
    manifest = read_manifest(root)
    if manifest is not None and all(manifest.get(k) == v for k, v in identity.items()):
        return dict(manifest["summary"]), True
    if root.exists():
        ours = manifest is not None and manifest.get("generator") == identity.get("generator")
        if not root.is_dir() or (not ours and any(root.iterdir())):
            raise FileExistsError(
                f"{root} exists and was not written by {identity.get('generator')}"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        summary = write(tmp)
        write_json(tmp / "manifest.json", {**identity, **(extra or {}), "summary": summary})
        if root.exists():
            trash = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(root, trash)
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return summary, False


def generate_benchmark(root: str | Path, cfg: SyntheticConfig | None = None) -> dict[str, Any]:
    """Generate the synthetic benchmark under ``root`` (idempotent and atomic).

    If ``root/manifest.json`` exists with this config's hash, nothing is written. Else
    the benchmark is written into a temporary sibling directory which then replaces
    ``root`` (:func:`generate_folder`). An existing ``root`` is only replaced when it
    is empty or was written by this generator.

    Args:
        root: Target directory (CIRR layout, see the package docstring).
        cfg: Configuration; defaults to :class:`SyntheticConfig()`.

    Returns:
        Summary dict: ``root``, ``config_hash``, ``reused``, ``seconds``, ``images``,
        ``triplets``, ``edit_types`` and per split ``splits[split]`` with ``families``,
        ``images``, ``triplets`` and ``edit_types`` (counts per ``edit["type"]``). The
        ambiguous tier adds ``tier`` and per split ``valid_targets`` (queries, mean,
        median, share_multiple, max, histogram of valid targets per query,
        share_outside_family, near_misses).

    Raises:
        FileExistsError: ``root`` is a non-empty directory not made by this generator.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root).resolve()
    digest = cfg.config_hash()
    start = time.perf_counter()
    identity = {"generator": GENERATOR_NAME, "config_hash": digest}
    extra = {"format_version": FORMAT_VERSION, "config": cfg.settings()}
    summary, reused = generate_folder(root, identity, lambda tmp: _generate_into(tmp, cfg), extra)
    seconds = time.perf_counter() - start
    if reused:
        logger.info("Synthetic benchmark at %s is up to date (hash %s)", root, digest[:12])
    else:
        logger.info(
            "Generated synthetic benchmark at %s: %d images, %d triplets in %.2f s",
            root,
            summary["images"],
            summary["triplets"],
            seconds,
        )
    return {
        **summary,
        "root": str(root),
        "config_hash": digest,
        "reused": reused,
        "seconds": seconds,
    }
