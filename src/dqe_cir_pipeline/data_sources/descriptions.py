"""Described-scene corpus for BLIP-2 stage-1 (image-text) pretraining of the tiny backbone.

The corpus holds *fresh* scenes of the synthetic benchmark's world (1-3 coloured shapes on
a 3 x 3 grid, see :mod:`~dqe_cir_pipeline.data_sources.synthetic`), each rendered once
and described several times in natural language::

    <root>/images/<image_id>.png   RGB, ``image_size`` x ``image_size``
    <root>/corpus.json             [{"image_id", "path" (relative), "descriptions",
                                     "objects"}, ...], one record per line
    <root>/manifest.json           config, config hash, exclusion hash, summary

Fresh means: no corpus scene is in ``exclude`` and no scene appears twice. The caller
excludes the benchmark's base scenes
(:func:`~dqe_cir_pipeline.data_sources.synthetic.benchmark_base_scenes`) or, stricter,
every benchmark scene including the edited targets (:func:`benchmark_scenes`). Scenes
are drawn exactly as the benchmark draws its base scenes and rendered by the same
renderer with the same background greys, so the pretraining images come from the
benchmark's image distribution. There are only 2,160 single-object scenes, so a large
corpus runs out of them: the default 20,000 scenes hold about 10 % instead of 25 %.

Every description states every object's colour, shape, size and grid cell [design]: the
text must single the image out among look-alikes (the benchmark's families differ by one
attribute of one object), so only word choice (the benchmark's synonym tables), phrasing
and object order vary.

Like :func:`~dqe_cir_pipeline.data_sources.synthetic.generate_benchmark`,
:func:`generate_corpus` is seeded (same config and exclusion: byte-identical files),
idempotent (a manifest with the same config and exclusion hashes means "already
generated") and atomic (a temporary sibling directory replaces ``root``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dqe_cir_pipeline.data_sources.phrasing import corpus_vocabulary, describe
from dqe_cir_pipeline.data_sources.synthetic.ambiguous import family_images
from dqe_cir_pipeline.data_sources.synthetic.config import FORMAT_VERSION as RENDERER_VERSION
from dqe_cir_pipeline.data_sources.synthetic.config import SPLITS, SyntheticConfig
from dqe_cir_pipeline.data_sources.synthetic.rendering import render_scene
from dqe_cir_pipeline.data_sources.synthetic.scenes import (
    SceneObject,
    sample_background,
    sample_base_scene,
    sample_nuisance,
)
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import POSITIONS
from dqe_cir_pipeline.data_sources.synthetic.writing import (
    IO_THREADS,
    generate_folder,
    write_json,
)

logger = logging.getLogger(__name__)

#: Bumped whenever the corpus written for a given config changes; part of the hash.
FORMAT_VERSION = 1
#: Written into the manifest; a directory whose manifest names another generator is
#: never overwritten.
GENERATOR_NAME = "dqe_cir_pipeline.data_sources.descriptions"
#: Second entry of every corpus seed sequence: keeps the corpus streams apart from the
#: benchmark's ``SeedSequence([seed, split_index, family])`` for any equal seed.
_STREAM_TAG = 0x5C0D5
#: Scenes per rendering task handed to the writer threads.
_CHUNK = 256

Scene = tuple[SceneObject, ...]

# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorpusConfig:
    """Configuration of the described-scene corpus.

    Rendering defaults equal the benchmark's (``conf/base/parameters_data_ingestion.yml``:
    64 px, supersample 4, no nuisance jitter).

    Attributes:
        seed: Master seed of the scene, appearance and text streams.
        n_scenes: Number of distinct scenes (= images).
        descriptions_per_scene: Distinct descriptions per scene (fewer only if a scene
            has fewer phrasings than asked, never for the default 3).
        image_size: Side of the written square PNGs, in pixels.
        supersample: Render at this factor and box-downsample (anti-aliasing).
        position_jitter: Max sub-cell offset of an object, as a fraction of the cell side.
        background_jitter: Max per-channel shade change of the background.
        png_compress_level: zlib level of the written PNGs (0-9).
        object_count_weights: Probability of 1, 2, 3 objects in a drawn scene (the
            benchmark's default). Single-object scenes are few (2,160 in all), so a large
            corpus holds fewer of them than this share once they run out.
    """

    seed: int = 1
    n_scenes: int = 20000
    descriptions_per_scene: int = 3
    image_size: int = 64
    supersample: int = 4
    position_jitter: float = 0.0
    background_jitter: int = 0
    png_compress_level: int = 1
    object_count_weights: tuple[float, float, float] = (0.25, 0.4, 0.35)

    def __post_init__(self) -> None:
        """Validate the values (the rendering ones as the benchmark's config does)."""
        if self.n_scenes < 1 or self.descriptions_per_scene < 1:
            raise ValueError("n_scenes and descriptions_per_scene must be >= 1")
        self.render_config()

    def render_config(self) -> SyntheticConfig:
        """The benchmark config with this corpus's scene-drawing and rendering settings."""
        return SyntheticConfig(
            seed=self.seed,
            image_size=self.image_size,
            supersample=self.supersample,
            position_jitter=self.position_jitter,
            background_jitter=self.background_jitter,
            png_compress_level=self.png_compress_level,
            object_count_weights=tuple(self.object_count_weights),  # type: ignore[arg-type]
        )

    def config_hash(self) -> str:
        """Return a stable sha256 of the config and both generators' format versions."""
        payload = json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "renderer_format_version": RENDERER_VERSION,
                **asdict(self),
            },
            sort_keys=True,
            default=list,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _canonical(scene: Iterable[SceneObject]) -> Scene:
    """A scene's objects in the benchmark's canonical (row-major cell) order."""
    return tuple(sorted(scene, key=lambda o: POSITIONS[o.position]))


def benchmark_scenes(cfg: SyntheticConfig) -> set[Scene]:
    """Every scene of the benchmark generated with ``cfg``: bases and edited variants.

    The stricter exclusion for :func:`generate_corpus`: with only the base scenes
    excluded (:func:`~.synthetic.benchmark_base_scenes`) a corpus image may still show
    the same scene as a benchmark *target* (e.g. a "remove" edit of a val base).
    Builds the families with the generator's own family builder, in the config's tier
    (no rendering).

    Args:
        cfg: The benchmark's configuration.

    Returns:
        The scenes, objects in canonical (row-major cell) order.
    """
    used: set[Scene] = set()
    scenes: set[Scene] = set()
    family_id = 0
    for split in SPLITS:
        for index in range(int(getattr(cfg, f"{split}_families", 0))):
            variants = family_images(cfg, split, index, family_id, used)
            scenes.update(_canonical(v.objects) for v in variants)
            family_id += 1
    return scenes


def exclusion_hash(exclude: Iterable[Iterable[SceneObject]]) -> str:
    """Stable sha256 of a set of scenes (order of scenes and of objects ignored).

    Args:
        exclude: Scenes, each an iterable of :class:`~.synthetic.SceneObject`.

    Returns:
        The hex digest.
    """
    rows = sorted(
        json.dumps([list(asdict(o).values()) for o in _canonical(scene)]) for scene in exclude
    )
    return hashlib.sha256("\n".join(rows).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """One corpus scene before rendering."""

    image_id: str
    objects: Scene
    descriptions: tuple[str, ...]
    offsets: tuple[tuple[float, float], ...]
    background: tuple[int, int, int]


def _draw_items(cfg: CorpusConfig, exclude: set[Scene], stats: dict[str, int]) -> Iterator[_Item]:
    """Yield the corpus's distinct, non-excluded scenes with their looks and texts.

    Three seeded streams: scenes (with the rejections), looks (background, nuisance) and
    texts, so e.g. more descriptions per scene never change the scenes or images.
    ``stats`` receives the counts of draws and rejections.
    """
    render_cfg = cfg.render_config()
    scene_rng, look_rng, text_rng = (
        np.random.default_rng(np.random.SeedSequence([cfg.seed, _STREAM_TAG, k])) for k in range(3)
    )
    width = max(6, len(str(cfg.n_scenes - 1)))
    seen: set[Scene] = set()
    stats.update(attempts=0, rejected_excluded=0, rejected_duplicate=0)
    max_attempts = 50 * cfg.n_scenes + 10_000
    while len(seen) < cfg.n_scenes:
        if stats["attempts"] >= max_attempts:  # pragma: no cover - 5e8 distinct scenes
            raise RuntimeError(f"only {len(seen)} fresh scenes in {max_attempts} draws")
        stats["attempts"] += 1
        scene = sample_base_scene(scene_rng, render_cfg)
        if scene in exclude:
            stats["rejected_excluded"] += 1
            continue
        if scene in seen:
            stats["rejected_duplicate"] += 1
            continue
        image_id = f"scene_{len(seen):0{width}d}"
        seen.add(scene)
        # Background as a benchmark family's: one grey level plus a slight tint.
        base_bg = sample_background(look_rng)
        offsets, background = sample_nuisance(look_rng, scene, base_bg, render_cfg)
        texts: list[str] = []
        for _ in range(8 * cfg.descriptions_per_scene):  # distinct texts, bounded retries
            text = describe(scene, text_rng)
            if text not in texts:
                texts.append(text)
                if len(texts) == cfg.descriptions_per_scene:
                    break
        yield _Item(image_id, scene, tuple(texts), tuple(offsets), background)


def _render_chunk(directory: Path, items: Sequence[_Item], cfg: CorpusConfig) -> None:
    """Render and write ``<directory>/<image_id>.png`` for each item."""
    for item in items:
        image = render_scene(
            item.objects, item.background, cfg.image_size, item.offsets, cfg.supersample
        )
        image.save(
            directory / f"{item.image_id}.png",
            format="PNG",
            compress_level=cfg.png_compress_level,
        )


def _generate_into(tmp: Path, cfg: CorpusConfig, exclude: set[Scene]) -> dict[str, Any]:
    """Write the whole corpus into the fresh directory ``tmp``; return the summary."""
    images = tmp / "images"
    images.mkdir(parents=True)
    stats: dict[str, int] = {}
    items: list[_Item] = []
    with ThreadPoolExecutor(max_workers=IO_THREADS) as pool:
        futures = []
        for item in _draw_items(cfg, exclude, stats):
            items.append(item)
            if len(items) % _CHUNK == 0:  # render while the next scenes are drawn
                futures.append(pool.submit(_render_chunk, images, items[-_CHUNK:], cfg))
        if len(items) % _CHUNK:
            futures.append(pool.submit(_render_chunk, images, items[-(len(items) % _CHUNK) :], cfg))
        records = [
            {
                "image_id": item.image_id,
                "path": f"images/{item.image_id}.png",
                "descriptions": list(item.descriptions),
                "objects": [o.as_dict() for o in item.objects],
            }
            for item in items
        ]
        write_json(tmp / "corpus.json", records)
        for future in futures:
            future.result()  # re-raise the first rendering / writing error, if any
    counts = Counter(len(item.objects) for item in items)
    return {
        "images": len(items),
        "descriptions": sum(len(item.descriptions) for item in items),
        "object_counts": {str(n): counts[n] for n in sorted(counts)},
        **stats,
    }


def generate_corpus(
    root: str | Path, cfg: CorpusConfig, exclude: Iterable[Iterable[SceneObject]]
) -> dict[str, Any]:
    """Generate the described-scene corpus under ``root`` (idempotent and atomic).

    Scenes are drawn as the benchmark draws its base scenes (its own seeded stream),
    rejecting every scene of ``exclude`` and every repeat; each is rendered once with a
    benchmark-like grey background and described ``descriptions_per_scene`` times by
    :func:`describe`. If ``root/manifest.json`` holds this config's hash and this
    exclusion's hash, nothing is written. Else the corpus is written into a temporary
    sibling directory which then replaces ``root``; an interrupted run leaves at most a
    ``.<name>.tmp-*`` sibling behind. An existing ``root`` is only replaced when it is
    empty or was written by this generator.

    Args:
        root: Target directory (layout in the module docstring).
        cfg: Configuration.
        exclude: Scenes the corpus must not contain (object order within a scene is
            ignored): :func:`~.synthetic.benchmark_base_scenes` of the benchmark's
            config, or :func:`benchmark_scenes` to exclude its targets too.

    Returns:
        Summary dict: ``root``, ``config_hash``, ``exclusion_hash``, ``reused``,
        ``seconds``, ``images``, ``descriptions``, ``object_counts`` (images per object
        count, keys "1"-"3"), ``attempts``, ``rejected_excluded``, ``rejected_duplicate``.

    Raises:
        FileExistsError: ``root`` is a non-empty directory not made by this generator.
    """
    root = Path(root).resolve()
    start = time.perf_counter()
    excluded = {_canonical(scene) for scene in exclude}
    digest, ex_digest = cfg.config_hash(), exclusion_hash(excluded)
    identity = {"generator": GENERATOR_NAME, "config_hash": digest, "exclusion_hash": ex_digest}
    extra = {
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "excluded_scenes": len(excluded),
    }
    summary, reused = generate_folder(
        root, identity, lambda tmp: _generate_into(tmp, cfg, excluded), extra
    )
    seconds = time.perf_counter() - start
    if reused:
        logger.info("Description corpus at %s is up to date (hash %s)", root, digest[:12])
    else:
        logger.info(
            "Generated description corpus at %s: %d images, %d descriptions in %.2f s",
            root,
            summary["images"],
            summary["descriptions"],
            seconds,
        )
    return {
        **summary,
        "root": str(root),
        "config_hash": digest,
        "exclusion_hash": ex_digest,
        "reused": reused,
        "seconds": seconds,
    }


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

_RECORD_KEYS = ("image_id", "path", "descriptions", "objects")


def read_corpus(root: str | Path) -> pd.DataFrame:
    """Read a corpus written by :func:`generate_corpus`.

    Args:
        root: The corpus directory.

    Returns:
        One row per image, in corpus order, with columns ``image_id``, ``path``
        (absolute, str), ``descriptions`` (list of str) and ``n_objects`` (int).

    Raises:
        FileNotFoundError: ``root/corpus.json`` or an image it lists is missing.
        ValueError: ``corpus.json`` is not valid JSON or a record is malformed (the
            message names the file and the record).
    """
    root = Path(root).resolve()
    path = root / "corpus.json"
    if not path.is_file():
        raise FileNotFoundError(f"description corpus file {path} is missing")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"description corpus file {path} is not valid JSON: {exc}") from exc
    if not isinstance(records, list) or not records:
        raise ValueError(f"description corpus file {path} must hold a non-empty JSON list")
    rows = []
    for i, rec in enumerate(records):
        where = f"{path}, record {i}"
        if not isinstance(rec, dict) or any(k not in rec for k in _RECORD_KEYS):
            raise ValueError(f"{where}: expected an object with keys {list(_RECORD_KEYS)}")
        texts, objects = rec["descriptions"], rec["objects"]
        if (
            not isinstance(texts, list)
            or not texts
            or not all(isinstance(t, str) and t.strip() for t in texts)
        ):
            raise ValueError(f"{where}: 'descriptions' must be a non-empty list of texts")
        if not isinstance(objects, list) or not 1 <= len(objects) <= 3:
            raise ValueError(f"{where}: 'objects' must be a list of 1-3 objects")
        image = root / str(rec["path"])
        if not image.is_file():
            raise FileNotFoundError(f"{where}: image {image} is missing")
        rows.append((str(rec["image_id"]), str(image), list(texts), len(objects)))
    frame = pd.DataFrame(rows, columns=["image_id", "path", "descriptions", "n_objects"])
    if frame["image_id"].duplicated().any():
        dup = frame.loc[frame["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"description corpus file {path}: duplicate image_id {dup!r}")
    return frame


__all__ = [
    "FORMAT_VERSION",
    "GENERATOR_NAME",
    "CorpusConfig",
    "benchmark_scenes",
    "corpus_vocabulary",
    "describe",
    "exclusion_hash",
    "generate_corpus",
    "read_corpus",
]
