"""Edits of a base scene: the feasible ones, a family's choice, their labels and texts.

An edit is a hashable key (``("color", j, "red")``, ``("add", c, s, z, p)``, ...); the
family builder applies it, records its labels and writes one modification text for it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dqe_cir_pipeline.data_sources.synthetic.config import SyntheticConfig
from dqe_cir_pipeline.data_sources.synthetic.scenes import Scene, SceneObject, choice
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import (
    COLOR_WORDS,
    COLORS,
    OBJECT_PHRASES,
    OTHER_EDIT_TYPES,
    POSITION_WORDS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    TEMPLATES,
    finish_sentence,
)

EditKey = tuple[Any, ...]


def _edit_pool(objects: Scene, edit_type: str) -> list[EditKey]:
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


def type_quota(rng: np.random.Generator, cfg: SyntheticConfig, k: int) -> dict[str, int]:
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


def select_edits(
    rng: np.random.Generator, objects: Scene, cfg: SyntheticConfig, k: int
) -> list[EditKey]:
    """Choose the family's ``k`` distinct edits, favouring partial-edit counterparts.

    Colour+shape edits first, then colour-only and shape-only edits sharing their object
    or value, so each full edit has its "right colour, wrong shape" look-alikes; a type
    whose feasible pool runs out hands its slots to the "other" types.
    """
    quota = type_quota(rng, cfg, k)
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
        n_other -= take(other_pools[str(choice(rng, feasible))], 1)
    return chosen


def apply_edit(objects: Scene, key: EditKey) -> Scene:
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


def edit_labels(objects: Scene, key: EditKey) -> dict[str, Any]:
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


def object_phrase(rng: np.random.Generator, objects: Scene, j: int) -> str:
    """Name object ``j`` of a base scene unambiguously (see :data:`OBJECT_PHRASES`)."""
    obj = objects[j]
    forms = OBJECT_PHRASES["single" if len(objects) == 1 else "multi"]
    return str(choice(rng, forms)).format(
        color=choice(rng, COLOR_WORDS[obj.color]),
        shape=choice(rng, SHAPE_WORDS[obj.shape]),
        pos=choice(rng, POSITION_WORDS[obj.position]),
    )


def caption(rng: np.random.Generator, objects: Scene, key: EditKey) -> str:
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
        "color": lambda v: choice(rng, COLOR_WORDS[v]),
        "shape": lambda v: choice(rng, SHAPE_WORDS[v]),
        "size": lambda v: choice(rng, SIZE_WORDS[v]),
        "pos": lambda v: choice(rng, POSITION_WORDS[v]),
        "obj": lambda v: object_phrase(rng, objects, key[1]),
    }
    template = str(choice(rng, TEMPLATES[kind]))
    text = template.format(**{k: words[k](v) for k, v in slots.items()})
    return finish_sentence(text)


def distractor_score(target: dict[str, Any], other: dict[str, Any]) -> int:
    """How hard ``other`` is as a distractor for ``target`` (higher = harder).

    Same edited object +2, each shared new value (colour, shape, size, cell) +2, same
    edit type +1: partial edits of the target rank first, then its edit on another object.
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
