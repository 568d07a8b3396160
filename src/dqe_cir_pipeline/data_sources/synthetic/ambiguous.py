"""The ambiguous tier: families whose queries several gallery images satisfy.

A family is a base scene (the reference of all its queries) and, per query, a few images
satisfying it (the requested colour / shape changes, sizes drawn freely since captions
never say one) and near-misses (exactly one requested attribute wrong, the annotated
target's sizes). Once a split's families are built, a query's valid targets are all the
split's images with its signature (:mod:`.satisfaction`), other families' included.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations, product

import numpy as np

from dqe_cir_pipeline.data_sources.synthetic.config import SyntheticConfig
from dqe_cir_pipeline.data_sources.synthetic.edits import caption, object_phrase, type_quota
from dqe_cir_pipeline.data_sources.synthetic.families import Variant, build_family, image_name
from dqe_cir_pipeline.data_sources.synthetic.satisfaction import Change, Request
from dqe_cir_pipeline.data_sources.synthetic.scenes import (
    Scene,
    SceneObject,
    choice,
    draw_fresh_base,
    family_rng,
    sample_background,
    sample_nuisance,
)
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import (
    AMBIGUOUS_EDIT_TYPES,
    CLAUSE_JOINERS,
    CLAUSE_TEMPLATES,
    COLOR_WORDS,
    COLORS,
    SHAPE_WORDS,
    SHAPES,
    SIZES,
    finish_sentence,
)

Changes = tuple[Change, ...]

#: The values each requestable attribute can take.
_VALUES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "shape": SHAPES}
_WORDS: dict[str, dict[str, tuple[str, ...]]] = {"color": COLOR_WORDS, "shape": SHAPE_WORDS}


@dataclass
class Query:
    """One query of a family: its meaning, caption and roles of the family's images."""

    edit_type: str
    request: Request
    caption: str
    own_valid: list[int]  # indices into the family's scenes
    target_hard: int
    near_misses: list[int]


@dataclass
class AmbiguousFamily:
    """A base scene (``variants[0]``), every image of the family, and its queries."""

    family_id: int
    variants: list[Variant]
    queries: list[Query]


def _one_object_changes(objects: Scene, j: int, avoid: SceneObject | None) -> list[Change]:
    """Colour and shape changes of object ``j``; none to ``avoid``'s colour or shape.

    ``avoid`` is the other object of a two-object edit: "make the square blue and the
    blue one a star" would read ambiguously once the square is blue.
    """
    obj = objects[j]
    out = []
    for attribute, values in _VALUES.items():
        banned = {getattr(obj, attribute)}
        if avoid is not None:
            banned.add(getattr(avoid, attribute))
        out += [Change(j, attribute, v) for v in values if v not in banned]
    return out


def change_pool(objects: Scene, edit_type: str) -> list[Changes]:
    """Every feasible request of one edit type on a base scene."""
    pool: list[Changes] = []
    if edit_type == "two_objects":
        for j, k in combinations(range(len(objects)), 2):
            first = _one_object_changes(objects, j, objects[k])
            second = _one_object_changes(objects, k, objects[j])
            pool += [(a, b) for a in first for b in second]
        return pool
    for j in range(len(objects)):
        singles = _one_object_changes(objects, j, None)
        colors = [c for c in singles if c.attribute == "color"]
        shapes = [c for c in singles if c.attribute == "shape"]
        if edit_type == "color":
            pool += [(c,) for c in colors]
        elif edit_type == "shape":
            pool += [(s,) for s in shapes]
        else:
            pool += [(c, s) for c in colors for s in shapes]
    return pool


def select_requests(
    rng: np.random.Generator, objects: Scene, cfg: SyntheticConfig
) -> list[tuple[str, Changes]]:
    """The family's distinct requests, by the edit-type shares (rest: two-object edits).

    A type with too few feasible requests (two-object edits of a one-object scene)
    hands its slots to colour+shape edits, then colour, then shape.
    """
    quota = type_quota(rng, cfg, cfg.queries_per_family)
    quota["two_objects"] = quota.pop("other")
    pools = {t: change_pool(objects, t) for t in AMBIGUOUS_EDIT_TYPES}
    orders = {t: [int(i) for i in rng.permutation(len(pools[t]))] for t in AMBIGUOUS_EDIT_TYPES}
    chosen: list[tuple[str, Changes]] = []
    shortfall = 0
    for t in AMBIGUOUS_EDIT_TYPES:
        got = min(quota[t], len(orders[t]))
        chosen += [(t, pools[t][i]) for i in orders[t][:got]]
        del orders[t][:got]
        shortfall += quota[t] - got
    for t in ("color_shape", "color", "shape"):
        got = min(shortfall, len(orders[t]))
        chosen += [(t, pools[t][i]) for i in orders[t][:got]]
        del orders[t][:got]
        shortfall -= got
    if shortfall:
        raise ValueError(f"queries_per_family={cfg.queries_per_family} exceeds the feasible edits")
    return chosen


def _with(request: Request, sizes: tuple[str, ...]) -> Scene:
    """The satisfying scene with these sizes (objects in the reference's order)."""
    required = request.required()
    return tuple(
        SceneObject(required[o.position]["color"], required[o.position]["shape"], z, o.position)
        for o, z in zip(request.reference, sizes, strict=True)
    )


def valid_scenes(rng: np.random.Generator, request: Request, cfg: SyntheticConfig) -> list[Scene]:
    """A few distinct scenes satisfying ``request``, their count by ``valid_count_weights``."""
    weights = np.asarray(cfg.valid_count_weights, dtype=float)
    count = 1 + int(rng.choice(len(weights), p=weights / weights.sum()))
    assignments = list(product(SIZES, repeat=len(request.reference)))
    picks = rng.permutation(len(assignments))[: min(count, len(assignments))]
    return [_with(request, assignments[int(i)]) for i in picks]


def near_miss_scenes(
    rng: np.random.Generator, request: Request, target: Scene, cfg: SyntheticConfig
) -> list[Scene]:
    """Per requested attribute, scenes equal to ``target`` but for a wrong value of it.

    Never the reference itself (it is not in the ranked gallery of its own query).
    """
    out: list[Scene] = []
    for change in request.changes:
        wrong = [v for v in _VALUES[change.attribute] if v != change.value]
        taken = 0
        for i in rng.permutation(len(wrong)):
            if taken == cfg.near_misses_per_attribute:
                break
            objects = list(target)
            obj = objects[change.object]
            values = obj.as_dict() | {change.attribute: wrong[int(i)]}
            objects[change.object] = SceneObject(**values)
            scene = tuple(objects)
            if scene != request.reference and scene not in out:
                out.append(scene)
                taken += 1
    return out


def request_caption(rng: np.random.Generator, base: Scene, edit_type: str, changes: Changes) -> str:
    """One modification text for a request on ``base`` (sizes never said)."""
    if edit_type != "two_objects":
        j = changes[0].object
        key = (edit_type, j, *(c.value for c in changes))
        return caption(rng, base, key)
    clauses = []
    for change in changes:
        template = str(choice(rng, CLAUSE_TEMPLATES[change.attribute]))
        word = str(choice(rng, _WORDS[change.attribute][change.value]))
        clauses.append(
            template.format(obj=object_phrase(rng, base, change.object), **{change.attribute: word})
        )
    first, second = (clauses[int(i)] for i in rng.permutation(2))
    return finish_sentence(str(choice(rng, CLAUSE_JOINERS)).format(first=first, second=second))


def build_ambiguous_family(
    cfg: SyntheticConfig, split: str, index: int, family_id: int, used_bases: set[Scene]
) -> AmbiguousFamily:
    """Build one family, deterministic in (seed, split, index); base scenes as unique's."""
    rng = family_rng(cfg, split, index)
    base = draw_fresh_base(rng, cfg, used_bases)
    base_bg = sample_background(rng)
    scenes: list[Scene] = [base]
    where: dict[Scene, int] = {base: 0}

    def add(scene: Scene) -> int:
        if scene not in where:
            where[scene] = len(scenes)
            scenes.append(scene)
        return where[scene]

    queries = []
    for edit_type, changes in select_requests(rng, base, cfg):
        request = Request(base, changes)
        own = [add(s) for s in valid_scenes(rng, request, cfg)]
        hard = own[int(rng.integers(len(own)))]
        misses = [add(s) for s in near_miss_scenes(rng, request, scenes[hard], cfg)]
        text = request_caption(rng, base, edit_type, changes)
        queries.append(Query(edit_type, request, text, own, hard, misses))
    # variant numbers do not reveal which images are valid, near-misses or the base's kin
    number = [0] + [int(v) + 1 for v in rng.permutation(len(scenes) - 1)]
    variants = [
        Variant(image_name(split, family_id, n), s) for n, s in zip(number, scenes, strict=True)
    ]
    for i in np.argsort(number):
        var = variants[int(i)]
        var.offsets, var.background = sample_nuisance(rng, var.objects, base_bg, cfg)
    return AmbiguousFamily(family_id, variants, queries)


def family_images(
    cfg: SyntheticConfig, split: str, index: int, family_id: int, used_bases: set[Scene]
) -> list[Variant]:
    """A family's images (base first) in the config's tier, without rendering them."""
    if cfg.tier == "ambiguous":
        return build_ambiguous_family(cfg, split, index, family_id, used_bases).variants
    return build_family(cfg, split, index, family_id, used_bases)
