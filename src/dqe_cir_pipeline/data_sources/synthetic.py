"""Embedded synthetic composed-image-retrieval benchmark, written in the CIRR layout.

The generator renders small scenes (1-3 coloured shapes on a plain background) with PIL
and writes them exactly where the CIRR reader looks for them::

    <root>/captions/cap.<split>.json         CIRR-style triplet records (+ an ``edit`` dict)
    <root>/image_splits/split.<split>.json   {image_name: "./<split>/<image_name>.png"}
    <root>/<split>/<image_name>.png          RGB, ``image_size`` x ``image_size``
    <root>/manifest.json                     config, config hash, summary

Data are organised in scene *families* [design]: a base scene plus
``variants_per_family`` edited variants of it, each differing from the base by exactly one
edit (colour, shape, colour+shape, size, position, add object, remove object). Every
variant is the target of one triplet whose reference is the family's base image, and the
variants are chosen so that partial edits exist next to each full edit (right colour /
wrong shape, right shape / wrong colour, the same edit on another object). Consequence:
the pixel neighbourhood of a reference is its whole family, and a text-blind ranker can
only guess which family member the text asks for, so its Recall@K is about
``K / variants_per_family`` (about 3 % / 17 % / 33 % at K = 1 / 5 / 10 with the default
30 variants), leaving the headroom that only the modification text can close.

Three splits [design]: ``train`` (fitting), ``val`` (model selection: per-epoch
validation and the best epoch) and ``test`` (held out, the reported numbers), with
pairwise disjoint scene families (no base scene is shared between any two splits).
Families are drawn in split order (train, val, test) from one shared set of used base
scenes, so adding the test split (``test_families > 0``) leaves every train and val file
byte-identical to a generation without it; ``test_families = 0`` writes no test split.

Each rendering also draws small nuisance factors independently (a sub-cell offset per
object and a slight background shade) [design], so that two family members never differ
*only* in the edited pixels; the labels (colour, shape, size, grid cell) are unaffected.

Everything is seeded: the same :class:`SyntheticConfig` gives byte-identical JSON and PNG
files. :func:`generate_benchmark` is idempotent (a manifest with the same config hash means
"already generated") and atomic (it writes a temporary sibling directory and renames it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

#: Bumped whenever the generator's output for a given config changes; part of the hash.
FORMAT_VERSION = 1
#: Written into the manifest; a directory whose manifest names another generator is
#: never overwritten.
GENERATOR_NAME = "dqe_cir_pipeline.data_sources.synthetic"
#: Written in this order; a family's seed holds its split's index here, so a split appended
#: at the end never changes the earlier splits' files.
SPLITS: tuple[str, ...] = ("train", "val", "test")

# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

#: Object colours: label -> RGB. Saturated and far apart in RGB; none is grey, so the
#: grey background (see :data:`BACKGROUND_GRAY_RANGE`) can never be mistaken for one.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 30),
    "green": (35, 170, 55),
    "cyan": (30, 210, 220),
    "blue": (35, 70, 225),
    "purple": (135, 40, 185),
    "pink": (250, 120, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

#: Words used for each colour in modification texts (first = the plain label).
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "lemon yellow"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "royal blue"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "hot pink"),
    "white": ("white", "snow white"),
    "black": ("black", "jet black"),
}

#: Shape labels; each has a dedicated renderer in :func:`_draw_object`. Squares and
#: diamonds are never rotated, so they stay distinct.
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "diamond",
    "crescent",
)

#: Words used for each shape in modification texts (first = the plain label).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign", "plus"),
    "hexagon": ("hexagon", "six-sided shape"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "crescent": ("crescent", "moon", "crescent moon"),
}

#: Size label -> half-extent of the shape as a fraction of the grid-cell side. Large
#: shapes almost fill their cell; objects live in distinct cells so they never overlap
#: by more than the nuisance jitter allows.
SIZES: dict[str, float] = {"small": 0.28, "medium": 0.36, "large": 0.46}

#: Words used for each size in modification texts.
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium-sized", "mid-sized", "medium"),
    "large": ("large", "big", "huge"),
}

#: Position label -> (row, column) of the 3 x 3 grid cell.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}

#: Noun phrases for each position; texts use "at the <noun>" / "to the <noun>".
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("top left corner", "upper left corner", "top-left corner"),
    "top": ("top", "top middle", "upper middle"),
    "top right": ("top right corner", "upper right corner", "top-right corner"),
    "left": ("left side", "middle left", "left edge"),
    "center": ("center", "middle", "centre"),
    "right": ("right side", "middle right", "right edge"),
    "bottom left": ("bottom left corner", "lower left corner", "bottom-left corner"),
    "bottom": ("bottom", "bottom middle", "lower middle"),
    "bottom right": ("bottom right corner", "lower right corner", "bottom-right corner"),
}

#: Grey level range of the background (each family draws one, plus a tiny tint).
BACKGROUND_GRAY_RANGE: tuple[int, int] = (100, 150)

#: Edit types recorded in ``edit["type"]``; ``"color_shape"`` maps to the schema's
#: ``"both"`` bucket and the last four to ``"other"``.
EDIT_TYPES: tuple[str, ...] = ("color", "shape", "color_shape", "size", "position", "add", "remove")
OTHER_EDIT_TYPES: tuple[str, ...] = ("size", "position", "add", "remove")

#: Modification-text templates per edit type. Slots: ``{obj}`` (a phrase naming the
#: edited object of the reference), ``{color}``, ``{shape}``, ``{size}``, ``{pos}``
#: (synonyms drawn from the ``*_WORDS`` tables). "a" becomes "an" before a vowel.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "make {obj} {color}",
        "change the color of {obj} to {color}",
        "recolor {obj} {color}",
        "paint {obj} {color}",
        "turn {obj} {color}",
        "{obj} should be {color} instead",
    ),
    "shape": (
        "make {obj} a {shape}",
        "change {obj} into a {shape}",
        "turn {obj} into a {shape} of the same color",
        "replace {obj} with a {shape} of the same color",
        "reshape {obj} into a {shape}",
        "{obj} should be a {shape} instead",
    ),
    "color_shape": (
        "make {obj} a {color} {shape}",
        "turn {obj} into a {color} {shape}",
        "replace {obj} with a {color} {shape}",
        "change {obj} to a {color} {shape}",
        "swap {obj} for a {color} {shape}",
    ),
    "size": (
        "make {obj} {size}",
        "resize {obj} so that it is {size}",
        "scale {obj} to be {size}",
        "{obj} should be {size} instead",
    ),
    "position": (
        "move {obj} to the {pos}",
        "shift {obj} to the {pos}",
        "place {obj} at the {pos}",
        "relocate {obj} to the {pos}",
        "{obj} should be at the {pos} instead",
    ),
    "add": (
        "add a {size} {color} {shape} at the {pos}",
        "put a {size} {color} {shape} at the {pos}",
        "place an extra {size} {color} {shape} at the {pos}",
        "include a {size} {color} {shape} at the {pos}",
        "there should also be a {size} {color} {shape} at the {pos}",
    ),
    "remove": (
        "remove {obj}",
        "delete {obj}",
        "take away {obj}",
        "get rid of {obj}",
        "erase {obj}",
        "{obj} should be gone",
    ),
}

#: Phrases naming an object of the reference scene. With a single object any of the
#: ``single`` forms identifies it; with several, base scenes have pairwise distinct
#: colours, shapes and cells, so each ``multi`` form is unambiguous.
OBJECT_PHRASES: dict[str, tuple[str, ...]] = {
    "single": ("the {shape}", "the {color} {shape}", "the shape", "the object"),
    "multi": (
        "the {shape}",
        "the {color} {shape}",
        "the {color} one",
        "the {color} shape",
        "the {shape} at the {pos}",
        "the object at the {pos}",
    ),
}


# --------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticConfig:
    """Configuration of the synthetic benchmark.

    Attributes:
        seed: Master seed; every family draws from ``SeedSequence([seed, split, index])``.
        image_size: Side of the written square PNGs, in pixels.
        train_families: Number of scene families in the train split.
        val_families: Number of scene families in the val split (disjoint from train);
            the split models are selected on.
        test_families: Number of scene families in the held-out test split (disjoint
            from train and val); the split results are reported on. 0 writes no test
            split. Drawn after val, so it never changes the train or val files.
        variants_per_family: Edited variants per val and test family; also triplets
            per family. The text-blind Recall@K is about ``K / variants_per_family``
            [design].
        train_variants_per_family: Variants per train family (``None``: as val and
            test). Only the evaluated splits need many look-alikes per reference; fewer variants
            per train family buy more distinct train scenes for the same image count,
            which is what generalisation to unseen val scenes needs [design].
        object_count_weights: Probability of 1, 2, 3 objects in a base scene.
        share_color: Target share of colour-only edits.
        share_shape: Target share of shape-only edits.
        share_color_shape: Target share of colour+shape edits; the rest is "other"
            (size, position, add, remove; uniform over the feasible ones).
        distractors_per_triplet: Hard distractors in ``img_set.members`` (CIRR: 4).
        supersample: Render at this factor and box-downsample (anti-aliasing).
        position_jitter: Max sub-cell offset of an object per rendering, as a fraction
            of the cell side (nuisance, label-preserving) [design].
        background_jitter: Max per-channel shade change of the background per rendering.
        png_compress_level: zlib level of the written PNGs (0-9).
    """

    seed: int = 0
    image_size: int = 64
    train_families: int = 100
    val_families: int = 34
    test_families: int = 34
    variants_per_family: int = 30
    train_variants_per_family: int | None = None
    object_count_weights: tuple[float, float, float] = (0.25, 0.4, 0.35)
    share_color: float = 0.25
    share_shape: float = 0.25
    share_color_shape: float = 0.20
    distractors_per_triplet: int = 4
    supersample: int = 4
    position_jitter: float = 0.08
    background_jitter: int = 6
    png_compress_level: int = 1

    def __post_init__(self) -> None:
        """Validate the values that would otherwise fail late or silently."""
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.train_families < 1 or self.val_families < 1:
            raise ValueError("train_families and val_families must be >= 1")
        if self.test_families < 0:
            raise ValueError(f"test_families must be >= 0 (0: no test split): {self.test_families}")
        if (
            min(self.variants_for("train"), self.variants_per_family)
            < self.distractors_per_triplet + 1
        ):
            raise ValueError("variants per family must exceed distractors_per_triplet")
        if len(self.object_count_weights) != 3 or min(self.object_count_weights) < 0:
            raise ValueError("object_count_weights must be 3 non-negative numbers")
        shares = (self.share_color, self.share_shape, self.share_color_shape)
        if min(shares) < 0 or sum(shares) > 1.0 + 1e-9:
            raise ValueError("edit shares must be non-negative and sum to <= 1")
        if self.supersample < 1 or not 0 <= self.png_compress_level <= 9:
            raise ValueError("supersample must be >= 1 and png_compress_level in 0..9")
        if not 0 <= self.position_jitter < 0.5 or self.background_jitter < 0:
            raise ValueError("position_jitter must be in [0, 0.5), background_jitter >= 0")

    def variants_for(self, split: str) -> int:
        """Edited variants (= triplets) per family in ``split`` (val and test: as many)."""
        if split == "train" and self.train_variants_per_family is not None:
            return self.train_variants_per_family
        return self.variants_per_family

    def config_hash(self) -> str:
        """Return a stable sha256 of the config and the generator's format version."""
        payload = json.dumps(
            {"format_version": FORMAT_VERSION, **asdict(self)}, sort_keys=True, default=list
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------
# Scene model
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene (all labels come from the vocabulary tables)."""

    color: str
    shape: str
    size: str
    position: str

    def as_dict(self) -> dict[str, str]:
        """Return the labels as a JSON-ready dict."""
        return {
            "color": self.color,
            "shape": self.shape,
            "size": self.size,
            "position": self.position,
        }


@dataclass
class _Variant:
    """A family member before rendering: its objects, edit and caption (None for base)."""

    name: str
    objects: tuple[SceneObject, ...]
    edit: dict[str, Any] | None = None
    caption: str | None = None
    offsets: list[tuple[float, float]] = field(default_factory=list)
    background: tuple[int, int, int] = (128, 128, 128)


def _choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """Pick one element of ``options`` with ``rng`` (works for any sequence)."""
    return options[int(rng.integers(len(options)))]


def _sample_base_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> tuple[SceneObject, ...]:
    """Draw a base scene whose objects have distinct colours, shapes and cells."""
    weights = np.asarray(cfg.object_count_weights, dtype=float)
    n_objects = int(rng.choice([1, 2, 3], p=weights / weights.sum()))
    colors = rng.choice(list(COLORS), size=n_objects, replace=False)
    shapes = rng.choice(list(SHAPES), size=n_objects, replace=False)
    cells = rng.choice(list(POSITIONS), size=n_objects, replace=False)
    sizes = rng.choice(list(SIZES), size=n_objects, replace=True)
    objects = [
        SceneObject(str(c), str(s), str(z), str(p))
        for c, s, z, p in zip(colors, shapes, sizes, cells, strict=True)
    ]
    # Canonical order (row-major by cell) so the object index is stable and readable.
    objects.sort(key=lambda o: POSITIONS[o.position])
    return tuple(objects)


# --------------------------------------------------------------------------------------
# Edits
# --------------------------------------------------------------------------------------

EditKey = tuple[Any, ...]


def _edit_pool(objects: tuple[SceneObject, ...], edit_type: str) -> list[EditKey]:
    """Enumerate every feasible edit of one type on a scene, as hashable keys."""
    n = len(objects)
    occupied = {o.position for o in objects}
    free = [p for p in POSITIONS if p not in occupied]
    pool: list[EditKey] = []
    for j, obj in enumerate(objects):
        if edit_type == "color":
            pool += [("color", j, c) for c in COLORS if c != obj.color]
        elif edit_type == "shape":
            pool += [("shape", j, s) for s in SHAPES if s != obj.shape]
        elif edit_type == "color_shape":
            pool += [
                ("color_shape", j, c, s)
                for c in COLORS
                for s in SHAPES
                if c != obj.color and s != obj.shape
            ]
        elif edit_type == "size":
            pool += [("size", j, z) for z in SIZES if z != obj.size]
        elif edit_type == "position":
            pool += [("position", j, p) for p in free]
        elif edit_type == "remove" and n >= 2:
            pool.append(("remove", j))
    if edit_type == "add" and n < len(POSITIONS):
        pool += [("add", c, s, z, p) for c in COLORS for s in SHAPES for z in SIZES for p in free]
    return pool


def _type_quota(rng: np.random.Generator, cfg: SyntheticConfig, k: int) -> dict[str, int]:
    """Split ``variants_per_family`` over color/shape/color_shape/other.

    Largest-remainder rounding with a random tie-break per family, so the shares hold on
    average over families and not only in expectation.
    """
    shares = {
        "color": cfg.share_color,
        "shape": cfg.share_shape,
        "color_shape": cfg.share_color_shape,
        "other": max(0.0, 1.0 - cfg.share_color - cfg.share_shape - cfg.share_color_shape),
    }
    exact = {t: s * k for t, s in shares.items()}
    quota = {t: int(math.floor(v)) for t, v in exact.items()}
    remainders = np.array([exact[t] - quota[t] for t in shares])
    left = k - sum(quota.values())
    if left > 0:
        probs = remainders / remainders.sum() if remainders.sum() > 0 else None
        for t in rng.choice(list(shares), size=left, replace=False, p=probs):
            quota[str(t)] += 1
    return quota


def _select_edits(
    rng: np.random.Generator, objects: tuple[SceneObject, ...], cfg: SyntheticConfig, k: int
) -> list[EditKey]:
    """Choose the family's distinct edits, favouring partial-edit counterparts.

    [design] Colour+shape edits are drawn first; colour-only and shape-only edits then
    prefer the same (object, colour) / (object, shape) pairs and the same value on
    another object, so the family holds "right colour, wrong shape", "right shape, wrong
    colour" and "wrong object" images next to each full edit. A type whose feasible
    pool runs out hands its remaining slots to the "other" types.
    """
    quota = _type_quota(rng, cfg, k)
    chosen: list[EditKey] = []
    taken: set[EditKey] = set()

    def take(candidates: list[EditKey], count: int) -> int:
        got = 0
        for key in candidates:
            if got == count:
                break
            if key not in taken:
                taken.add(key)
                chosen.append(key)
                got += 1
        return got

    def shuffled(pool: list[EditKey]) -> list[EditKey]:
        return [pool[i] for i in rng.permutation(len(pool))]

    shortfall = 0
    got = take(shuffled(_edit_pool(objects, "color_shape")), quota["color_shape"])
    shortfall += quota["color_shape"] - got
    full_edits = [k for k in chosen if k[0] == "color_shape"]
    for attr, slot in (("color", 2), ("shape", 3)):
        pool = _edit_pool(objects, attr)
        pool_set = set(pool)
        related: list[EditKey] = []
        for full in shuffled(full_edits):
            value = full[slot]
            related.append((attr, full[1], value))  # same object, same value
            related += [(attr, j, value) for j in range(len(objects)) if j != full[1]]
        related = [k for k in related if k in pool_set]
        got = take(related + shuffled(pool), quota[attr])
        shortfall += quota[attr] - got

    n_other = quota["other"] + shortfall
    other_pools = {t: shuffled(_edit_pool(objects, t)) for t in OTHER_EDIT_TYPES}
    while n_other > 0:
        feasible = [t for t in OTHER_EDIT_TYPES if any(k not in taken for k in other_pools[t])]
        if not feasible:  # pragma: no cover - "add" alone offers hundreds of edits
            raise RuntimeError("scene has fewer feasible edits than variants_per_family")
        n_other -= take(other_pools[str(_choice(rng, feasible))], 1)
    return chosen


def _apply_edit(objects: tuple[SceneObject, ...], key: EditKey) -> tuple[SceneObject, ...]:
    """Return the scene after one edit (objects keep their order; add appends)."""
    kind = key[0]
    out = list(objects)
    if kind == "add":
        _, c, s, z, p = key
        out.append(SceneObject(c, s, z, p))
        return tuple(out)
    j = key[1]
    obj = objects[j]
    if kind == "remove":
        del out[j]
    elif kind == "color":
        out[j] = SceneObject(key[2], obj.shape, obj.size, obj.position)
    elif kind == "shape":
        out[j] = SceneObject(obj.color, key[2], obj.size, obj.position)
    elif kind == "color_shape":
        out[j] = SceneObject(key[2], key[3], obj.size, obj.position)
    elif kind == "size":
        out[j] = SceneObject(obj.color, obj.shape, key[2], obj.position)
    elif kind == "position":
        out[j] = SceneObject(obj.color, obj.shape, obj.size, key[2])
    else:  # pragma: no cover - keys come from _edit_pool
        raise ValueError(f"unknown edit {key!r}")
    return tuple(out)


def _edit_labels(objects: tuple[SceneObject, ...], key: EditKey) -> dict[str, Any]:
    """Exact labels of one edit: type, attribute flags, object index, from / to values."""
    kind = key[0]
    labels: dict[str, Any] = {
        "type": kind,
        "edits_color": kind in ("color", "color_shape"),
        "edits_shape": kind in ("shape", "color_shape"),
    }
    if kind == "add":
        _, c, s, z, p = key
        labels.update(
            object=None,
            target_object=len(objects),
            **{"from": {}, "to": {"color": c, "shape": s, "size": z, "position": p}},
        )
        return labels
    j = key[1]
    obj = objects[j].as_dict()
    attrs = {
        "color": ("color",),
        "shape": ("shape",),
        "color_shape": ("color", "shape"),
        "size": ("size",),
        "position": ("position",),
        "remove": (),
    }[kind]
    if kind == "remove":
        before, after = obj, {}
    else:
        before = {a: obj[a] for a in attrs}
        after = dict(zip(attrs, key[2:], strict=True))
    labels.update(object=j, target_object=None if kind == "remove" else j)
    labels["from"] = before
    labels["to"] = after
    return labels


_ARTICLE_RE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def _object_phrase(rng: np.random.Generator, objects: tuple[SceneObject, ...], j: int) -> str:
    """Name object ``j`` of a base scene unambiguously (see :data:`OBJECT_PHRASES`)."""
    obj = objects[j]
    forms = OBJECT_PHRASES["single" if len(objects) == 1 else "multi"]
    return str(_choice(rng, forms)).format(
        color=_choice(rng, COLOR_WORDS[obj.color]),
        shape=_choice(rng, SHAPE_WORDS[obj.shape]),
        pos=_choice(rng, POSITION_WORDS[obj.position]),
    )


def _caption(rng: np.random.Generator, objects: tuple[SceneObject, ...], key: EditKey) -> str:
    """Render one modification text for ``key`` applied to the base ``objects``."""
    kind = key[0]
    slots: dict[str, str] = {}
    if kind == "add":
        _, c, s, z, p = key
        slots.update(color=c, shape=s, size=z, pos=p)
    else:
        slots["obj"] = "{obj}"
        if kind in ("color", "color_shape"):
            slots["color"] = key[2]
        if kind == "shape":
            slots["shape"] = key[2]
        if kind == "color_shape":
            slots["shape"] = key[3]
        if kind == "size":
            slots["size"] = key[2]
        if kind == "position":
            slots["pos"] = key[2]
    words = {
        "color": lambda v: _choice(rng, COLOR_WORDS[v]),
        "shape": lambda v: _choice(rng, SHAPE_WORDS[v]),
        "size": lambda v: _choice(rng, SIZE_WORDS[v]),
        "pos": lambda v: _choice(rng, POSITION_WORDS[v]),
        "obj": lambda v: _object_phrase(rng, objects, key[1]),
    }
    template = str(_choice(rng, TEMPLATES[kind]))
    text = template.format(**{k: words[k](v) for k, v in slots.items()})
    text = _ARTICLE_RE.sub(lambda m: m.group(1) + "n ", text)
    return text[0].upper() + text[1:]


def _distractor_score(target: dict[str, Any], other: dict[str, Any]) -> int:
    """How hard ``other`` is as a distractor for ``target`` (higher = harder) [design].

    Same edited object +2, each shared new value (colour, shape, size, cell) +2, same
    edit type +1: a colour+shape target ranks its colour-only and shape-only partial
    edits first, then the same edit on another object.
    """
    score = 0
    if target["object"] is not None and target["object"] == other["object"]:
        score += 2
    for attr, value in target["to"].items():
        if other["to"].get(attr) == value:
            score += 2
    if target["type"] == other["type"]:
        score += 1
    return score


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _regular_polygon(
    cx: float, cy: float, radius: float, n: int, phase: float
) -> list[tuple[float, float]]:
    """Vertices of a regular ``n``-gon (angles in radians, y axis pointing down)."""
    return [
        (
            cx + radius * math.cos(phase + 2 * math.pi * i / n),
            cy + radius * math.sin(phase + 2 * math.pi * i / n),
        )
        for i in range(n)
    ]


def _draw_object(
    image: Image.Image, draw: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, r: float
) -> None:
    """Draw one shape of half-extent ``r`` centred at (``cx``, ``cy``) on ``image``.

    Shapes are scaled so their visual areas are comparable [design]: polygons with
    sharp corners get a larger circumradius than the circle.
    """
    rgb = COLORS[obj.color]
    shape = obj.shape
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif shape == "square":
        h = 0.86 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=rgb)
    elif shape == "triangle":
        rr = 1.12 * r
        draw.polygon(_regular_polygon(cx, cy + 0.2 * rr, rr, 3, -math.pi / 2), fill=rgb)
    elif shape == "star":
        rr = 1.15 * r
        pts = []
        for i in range(10):
            rad = rr if i % 2 == 0 else 0.45 * rr
            ang = -math.pi / 2 + math.pi * i / 5
            pts.append((cx + rad * math.cos(ang), cy + 0.08 * rr + rad * math.sin(ang)))
        draw.polygon(pts, fill=rgb)
    elif shape == "cross":
        arm = 0.34 * r
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=rgb)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=rgb)
    elif shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, 1.02 * r, 6, 0.0), fill=rgb)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=rgb)
    elif shape == "crescent":
        # Outer disc minus a disc shifted right: a moon opening to the right.
        side = int(math.ceil(2 * r)) + 2
        mask = Image.new("L", (side, side), 0)
        mdraw = ImageDraw.Draw(mask)
        c = side / 2
        mdraw.ellipse((c - r, c - r, c + r, c + r), fill=255)
        shift = 0.55 * r
        mdraw.ellipse((c - r + shift, c - 0.92 * r, c + r + shift, c + 0.92 * r), fill=0)
        x0 = int(round(cx - c + 0.2 * r))
        y0 = int(round(cy - c))
        image.paste(Image.new("RGB", (side, side), rgb), (x0, y0), mask)
    else:  # pragma: no cover - SHAPES and this function are kept in sync by tests
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(
    objects: Sequence[SceneObject],
    background: tuple[int, int, int],
    image_size: int = 64,
    offsets: Sequence[tuple[float, float]] | None = None,
    supersample: int = 4,
) -> Image.Image:
    """Render a scene to an RGB image.

    Args:
        objects: Shapes to draw (each in its own grid cell).
        background: Background RGB.
        image_size: Output side in pixels.
        offsets: Per-object (dx, dy) as fractions of the cell side; zeros if None.
        supersample: Draw at this factor, then box-downsample (anti-aliasing).

    Returns:
        An ``image_size`` x ``image_size`` RGB :class:`PIL.Image.Image`.
    """
    side = image_size * supersample
    cell = side / 3.0
    image = Image.new("RGB", (side, side), tuple(background))
    draw = ImageDraw.Draw(image)
    for i, obj in enumerate(objects):
        row, col = POSITIONS[obj.position]
        dx, dy = offsets[i] if offsets is not None else (0.0, 0.0)
        cx = (col + 0.5 + dx) * cell
        cy = (row + 0.5 + dy) * cell
        _draw_object(image, draw, obj, cx, cy, SIZES[obj.size] * cell)
    if supersample > 1:
        # Image.reduce is an exact box average over supersample x supersample blocks,
        # about 3x faster than resize(..., BOX) for the same pixels.
        image = image.reduce(supersample)
    return image


def _nuisance(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    base_bg: tuple[int, int, int],
    cfg: SyntheticConfig,
) -> tuple[list[tuple[float, float]], tuple[int, int, int]]:
    """Draw one rendering's sub-cell offsets and background shade (labels unchanged)."""
    offsets: list[tuple[float, float]] = []
    for obj in objects:
        # Keep the shape (roughly) inside its cell whatever the jitter.
        limit = max(0.0, min(cfg.position_jitter, 0.5 - SIZES[obj.size] * 1.1))
        dx, dy = rng.uniform(-limit, limit, size=2)
        offsets.append((float(dx), float(dy)))
    dr, dg, db = (
        int(v) for v in rng.integers(-cfg.background_jitter, cfg.background_jitter + 1, size=3)
    )
    r, g, b = base_bg
    bg = (_clip8(r + dr), _clip8(g + dg), _clip8(b + db))
    return offsets, bg


def _clip8(value: int) -> int:
    """Clip an integer channel value to 0..255."""
    return min(255, max(0, value))


# --------------------------------------------------------------------------------------
# Families and records
# --------------------------------------------------------------------------------------


def _image_name(split: str, family_id: int, variant: int) -> str:
    """Image name (no extension) of one family member; ``variant`` 0 is the base."""
    return f"syn_{split}_{family_id:04d}_{variant:02d}"


def _build_family(
    cfg: SyntheticConfig,
    split: str,
    index: int,
    family_id: int,
    used_bases: set[tuple[SceneObject, ...]],
) -> list[_Variant]:
    """Build one family (base first), deterministic in (seed, split, index).

    The base scene is redrawn while it equals a base used by an earlier family, so no
    scene family appears twice, in particular not in two splits.
    """
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS.index(split), index]))
    base = _sample_base_scene(rng, cfg)
    while base in used_bases:
        base = _sample_base_scene(rng, cfg)
    used_bases.add(base)

    gray = int(rng.integers(BACKGROUND_GRAY_RANGE[0], BACKGROUND_GRAY_RANGE[1] + 1))
    tr, tg, tb = (int(t) for t in rng.integers(-4, 5, size=3))
    base_bg = (gray + tr, gray + tg, gray + tb)

    keys = _select_edits(rng, base, cfg, cfg.variants_for(split))
    order = rng.permutation(len(keys))  # variant numbers do not reveal the edit type
    variants = [_Variant(_image_name(split, family_id, 0), base)]
    for v, idx in enumerate(order, start=1):
        key = keys[int(idx)]
        edit = _edit_labels(base, key)
        edit.update(family=family_id, variant=v)
        variants.append(
            _Variant(
                _image_name(split, family_id, v),
                _apply_edit(base, key),
                edit=edit,
                caption=_caption(rng, base, key),
            )
        )
    for var in variants:
        var.offsets, var.background = _nuisance(rng, var.objects, base_bg, cfg)
    return variants


def _family_records(
    cfg: SyntheticConfig, variants: list[_Variant], first_pairid: int, family_seed: Sequence[int]
) -> list[dict[str, Any]]:
    """One CIRR-style record per variant, reference = the family's base image."""
    rng = np.random.default_rng(np.random.SeedSequence([*family_seed, 7]))
    base = variants[0]
    records = []
    for t, target in enumerate(variants[1:]):
        assert target.edit is not None and target.caption is not None
        others = [v for v in variants[1:] if v is not target]
        tiebreak = rng.random(len(others))
        scores = [_distractor_score(target.edit, o.edit or {}) for o in others]
        ranked = sorted(range(len(others)), key=lambda i: (-scores[i], tiebreak[i]))
        distractors = [others[i].name for i in ranked[: cfg.distractors_per_triplet]]
        members = [base.name, target.name, *distractors]
        members = [members[i] for i in rng.permutation(len(members))]
        pairid = first_pairid + t
        edit = dict(target.edit)
        edit["reference_objects"] = [o.as_dict() for o in base.objects]
        edit["target_objects"] = [o.as_dict() for o in target.objects]
        records.append(
            {
                "pairid": pairid,
                "reference": base.name,
                "caption": target.caption,
                "target_hard": target.name,
                "target_soft": {target.name: 1.0},
                "img_set": {"id": pairid, "members": members},
                "edit": edit,
            }
        )
    return records


def _write_json(path: Path, payload: Any) -> None:
    """Write JSON deterministically with sorted keys.

    [design] A list is written one compact element per line and a dict one entry per
    line: diff-friendly and readable, yet it stays on the C encoder (``indent`` would
    switch ``json`` to its pure-Python encoder, ~3 s for the default benchmark).
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


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """Return the parsed manifest of ``root`` or None when absent / unreadable."""
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_image(directory: Path, var: _Variant, cfg: SyntheticConfig) -> None:
    """Render one family member and write it as ``<directory>/<name>.png``."""
    image = render_scene(var.objects, var.background, cfg.image_size, var.offsets, cfg.supersample)
    image.save(directory / f"{var.name}.png", format="PNG", compress_level=cfg.png_compress_level)


#: Threads that render and write PNGs. [design] Rendering, PNG encoding and file
#: creation release the GIL for most of their time (file creation dominates on slow
#: disks), so a few threads overlap them; every image depends only on its own variant,
#: so the output stays byte-identical whatever the scheduling.
_IO_THREADS = 4


def _generate_into(tmp: Path, cfg: SyntheticConfig) -> dict[str, Any]:
    """Write the whole benchmark into the fresh directory ``tmp``; return the summary."""
    (tmp / "captions").mkdir(parents=True)
    (tmp / "image_splits").mkdir()
    used_bases: set[tuple[SceneObject, ...]] = set()
    pairid = 0
    family_id = 0
    summary: dict[str, Any] = {"splits": {}}
    total_types: Counter[str] = Counter()
    n_families = {
        "train": cfg.train_families,
        "val": cfg.val_families,
        "test": cfg.test_families,
    }
    with ThreadPoolExecutor(max_workers=_IO_THREADS) as pool:
        pending: list[Future[None]] = []
        for s_idx, split in enumerate(SPLITS):
            if n_families[split] == 0:
                continue  # only test may be empty: no files, no summary entry
            (tmp / split).mkdir()
            split_map: dict[str, str] = {}
            records: list[dict[str, Any]] = []
            for index in range(n_families[split]):
                variants = _build_family(cfg, split, index, family_id, used_bases)
                pending += [pool.submit(_write_image, tmp / split, v, cfg) for v in variants]
                for var in variants:
                    split_map[var.name] = f"./{split}/{var.name}.png"
                fam_records = _family_records(cfg, variants, pairid, (cfg.seed, s_idx, index))
                records += fam_records
                pairid += len(fam_records)
                family_id += 1
            _write_json(tmp / "captions" / f"cap.{split}.json", records)
            _write_json(tmp / "image_splits" / f"split.{split}.json", split_map)
            types = Counter(r["edit"]["type"] for r in records)
            total_types.update(types)
            summary["splits"][split] = {
                "families": n_families[split],
                "images": len(split_map),
                "triplets": len(records),
                "edit_types": dict(sorted(types.items())),
            }
        for future in pending:
            future.result()  # re-raise the first rendering / writing error, if any
    summary["edit_types"] = dict(sorted(total_types.items()))
    summary["images"] = sum(s["images"] for s in summary["splits"].values())
    summary["triplets"] = sum(s["triplets"] for s in summary["splits"].values())
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
    manifest = _read_manifest(root)
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
        _write_json(tmp / "manifest.json", {**identity, **(extra or {}), "summary": summary})
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
        root: Target directory (CIRR layout, see the module docstring).
        cfg: Configuration; defaults to :class:`SyntheticConfig()`.

    Returns:
        Summary dict: ``root``, ``config_hash``, ``reused``, ``seconds``, ``images``,
        ``triplets``, ``edit_types`` and per split ``splits[split]`` with ``families``,
        ``images``, ``triplets`` and ``edit_types`` (counts per ``edit["type"]``).

    Raises:
        FileExistsError: ``root`` is a non-empty directory not made by this generator.
    """
    cfg = cfg or SyntheticConfig()
    root = Path(root).resolve()
    digest = cfg.config_hash()
    start = time.perf_counter()
    identity = {"generator": GENERATOR_NAME, "config_hash": digest}
    extra = {"format_version": FORMAT_VERSION, "config": asdict(cfg)}
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


# --------------------------------------------------------------------------------------
# Text-blind baseline
# --------------------------------------------------------------------------------------


def pixel_embeddings(paths: Sequence[str | Path], size: int = 16) -> np.ndarray:
    """Embed images as their box-downsampled pixels, L2-normalised.

    Args:
        paths: Image files (any mode; converted to RGB).
        size: Side of the downsampled image.

    Returns:
        float32 array of shape (N, 3 * size * size), rows of unit L2 norm.
    """
    out = np.empty((len(paths), 3 * size * size), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            small = img.convert("RGB").resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def text_blind_recall(
    root: str | Path, split: str, ks: Sequence[int] = (1, 5, 10, 50), size: int = 16
) -> dict[str, float]:
    """Recall of a text-blind baseline that ranks by pixel similarity to the reference.

    CIRR protocol: every image of the split's gallery is ranked by cosine similarity of
    :func:`pixel_embeddings` to the reference, the reference itself is removed, and
    Recall@K is the share of queries whose target is in the top K. Recall_subset@K
    ranks only ``img_set.members`` minus the reference.

    Args:
        root: Benchmark directory written by :func:`generate_benchmark`.
        split: Split with targets ("train", "val" or "test").
        ks: Cut-offs for Recall@K.
        size: Downsampled side used by :func:`pixel_embeddings`.

    Returns:
        ``{"R@k": ..., "Rs@1": ..., "Rs@2": ..., "Rs@3": ...}`` in percent (0-100), as
        CIRR results are reported.
    """
    root = Path(root)
    records = json.loads((root / "captions" / f"cap.{split}.json").read_text(encoding="utf-8"))
    split_map = json.loads(
        (root / "image_splits" / f"split.{split}.json").read_text(encoding="utf-8")
    )
    names = list(split_map)
    index = {n: i for i, n in enumerate(names)}
    emb = pixel_embeddings([root / split_map[n] for n in names], size=size)
    ref_idx = np.array([index[r["reference"]] for r in records])
    tgt_idx = np.array([index[r["target_hard"]] for r in records])
    sims = emb[ref_idx] @ emb.T  # (Q, G)
    sims[np.arange(len(records)), ref_idx] = -np.inf  # remove the reference
    target_sim = sims[np.arange(len(records)), tgt_idx]
    rank = (sims > target_sim[:, None]).sum(axis=1)  # 0-based rank of the target
    result = {f"R@{k}": float(100.0 * np.mean(rank < k)) for k in ks}
    subset_rank = []
    for q, rec in enumerate(records):
        members = [index[m] for m in rec["img_set"]["members"] if m != rec["reference"]]
        subset_rank.append(int((sims[q, members] > target_sim[q]).sum()))
    srank = np.asarray(subset_rank)
    result.update({f"Rs@{k}": float(100.0 * np.mean(srank < k)) for k in (1, 2, 3)})
    return result


__all__ = [
    "BACKGROUND_GRAY_RANGE",
    "COLORS",
    "COLOR_WORDS",
    "EDIT_TYPES",
    "OBJECT_PHRASES",
    "OTHER_EDIT_TYPES",
    "POSITIONS",
    "POSITION_WORDS",
    "SHAPES",
    "SHAPE_WORDS",
    "SIZES",
    "SIZE_WORDS",
    "SPLITS",
    "TEMPLATES",
    "SceneObject",
    "SyntheticConfig",
    "generate_benchmark",
    "pixel_embeddings",
    "render_scene",
    "text_blind_recall",
]


def benchmark_base_scenes(cfg: SyntheticConfig) -> set[tuple[SceneObject, ...]]:
    """The base scenes of every family of the benchmark generated with ``cfg``.

    Replays the seeded base-scene draws of ``_build_family`` (split order of
    :data:`SPLITS`, ``<split>_families`` families per split, 0 for a split the config
    lacks, one shared set of used bases) without rendering anything, so it agrees exactly
    with the reference objects recorded in the generated captions. A corpus meant to
    hold no benchmark scene excludes these.

    Args:
        cfg: The benchmark's configuration.

    Returns:
        The base scenes, each a tuple of objects in canonical (row-major cell) order.
    """
    used: set[tuple[SceneObject, ...]] = set()
    for s_idx, split in enumerate(SPLITS):
        for index in range(int(getattr(cfg, f"{split}_families", 0))):
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, s_idx, index]))
            base = _sample_base_scene(rng, cfg)
            while base in used:
                base = _sample_base_scene(rng, cfg)
            used.add(base)
    return used


__all__ += ["benchmark_base_scenes"]
