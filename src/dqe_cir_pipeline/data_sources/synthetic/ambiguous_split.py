"""One split of the ambiguous tier: its families, each query's valid targets over the whole
split, the CIRR-style records, the per-image scene labels and the valid-target statistics.

Every valid target is listed in ``target_soft`` (1.0 each, as CIRR marks the images
annotators judged correct) and in ``edit["valid_targets"]``; ``target_hard`` is one of them,
drawn at random among its own family's, so nothing but the caption tells them apart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dqe_cir_pipeline.data_sources.synthetic.ambiguous import (
    AmbiguousFamily,
    Query,
    build_ambiguous_family,
)
from dqe_cir_pipeline.data_sources.synthetic.config import SPLITS, SyntheticConfig
from dqe_cir_pipeline.data_sources.synthetic.families import Variant
from dqe_cir_pipeline.data_sources.synthetic.satisfaction import Signature, signature
from dqe_cir_pipeline.data_sources.synthetic.scenes import Scene


@dataclass
class AmbiguousSplit:
    """What the writer needs of one split: images, records, labels and statistics."""

    variants: list[Variant]
    records: list[dict[str, Any]]
    scenes: dict[str, list[dict[str, str]]]
    stats: dict[str, Any]


def _edit_labels(family: AmbiguousFamily, query: Query, valid: list[str]) -> dict[str, Any]:
    """The record's ``edit`` dict: the request, roles of the images and exact labels."""
    base = family.variants[0]
    hard = family.variants[query.target_hard]
    changes = query.request.changes
    first = changes[0].object
    edit: dict[str, Any] = {
        "type": query.edit_type,
        "edits_color": any(c.attribute == "color" for c in changes),
        "edits_shape": any(c.attribute == "shape" for c in changes),
        "object": first,
        "target_object": first,
        "objects": sorted({c.object for c in changes}),
        "changes": [c.as_dict(base.objects) for c in changes],
        "family": family.family_id,
        "variant": int(hard.name.rsplit("_", 1)[1]),
        "reference_objects": [o.as_dict() for o in base.objects],
        "target_objects": [o.as_dict() for o in hard.objects],
        "tier": "ambiguous",
        "n_valid": len(valid),
        "valid_targets": valid,
        "near_misses": [family.variants[i].name for i in query.near_misses],
    }
    if len(edit["objects"]) == 1:  # the unique tier's single-object from / to
        edit["from"] = {c.attribute: base.objects[first].as_dict()[c.attribute] for c in changes}
        edit["to"] = {c.attribute: c.value for c in changes}
    return edit


def _members(
    rng: np.random.Generator,
    family: AmbiguousFamily,
    query: Query,
    valid: set[str],
    gallery: list[str],
    n_distractors: int,
) -> list[str]:
    """``img_set`` members: reference, annotated target, then near-misses and other
    non-valid images of the family (then of the split), never another valid target."""
    names = [v.name for v in family.variants]
    misses = [names[i] for i in query.near_misses]
    others = [n for n in names[1:] if n not in valid and n not in misses]
    picked: list[str] = []
    for pool in (misses, others):
        for i in rng.permutation(len(pool)):
            if len(picked) < n_distractors and pool[int(i)] not in picked:
                picked.append(pool[int(i)])
    if len(picked) < n_distractors:  # only tiny families: fill from the split
        rest = [n for n in gallery if n not in valid and n not in picked and n != names[0]]
        if len(rest) < n_distractors - len(picked):
            raise ValueError("too few non-valid images for distractors_per_triplet")
        picked += [rest[int(i)] for i in rng.permutation(len(rest))[: n_distractors - len(picked)]]
    members = [names[0], names[query.target_hard], *picked]
    return [members[int(i)] for i in rng.permutation(len(members))]


def _family_records(
    cfg: SyntheticConfig,
    family: AmbiguousFamily,
    index: dict[Signature, list[str]],
    gallery: list[str],
    first_pairid: int,
    family_seed: list[int],
) -> list[dict[str, Any]]:
    """One record per query of ``family``; valid targets looked up in the split's index."""
    rng = np.random.default_rng(np.random.SeedSequence([*family_seed, 7]))
    records = []
    for q, query in enumerate(family.queries):
        valid = sorted(index[query.request.signature()])
        hard = family.variants[query.target_hard].name
        if hard not in valid:  # pragma: no cover - the builder draws it from the valid ones
            raise AssertionError(f"{hard} does not satisfy its own query")
        pairid = first_pairid + q
        members = _members(rng, family, query, set(valid), gallery, cfg.distractors_per_triplet)
        records.append(
            {
                "pairid": pairid,
                "reference": family.variants[0].name,
                "caption": query.caption,
                "target_hard": hard,
                "target_soft": {name: 1.0 for name in valid},
                "img_set": {"id": pairid, "members": members},
                "edit": _edit_labels(family, query, valid),
            }
        )
    return records


def valid_target_stats(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Valid targets per query: mean, median, share with more than one, histogram, and the
    share of queries with a valid target in another family."""
    counts = np.asarray([r["edit"]["n_valid"] for r in records], dtype=float)
    outside = [
        any(n.rsplit("_", 1)[0] != r["reference"].rsplit("_", 1)[0] for n in r["target_soft"])
        for r in records
    ]
    histogram = Counter(int(c) for c in counts)
    return {
        "queries": len(records),
        "mean": round(float(counts.mean()), 4) if len(counts) else 0.0,
        "median": float(np.median(counts)) if len(counts) else 0.0,
        "share_multiple": round(float((counts > 1).mean()), 4) if len(counts) else 0.0,
        "max": int(counts.max()) if len(counts) else 0,
        "histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "share_outside_family": round(float(np.mean(outside)), 4) if outside else 0.0,
    }


def build_ambiguous_split(
    cfg: SyntheticConfig,
    split: str,
    n_families: int,
    first_family_id: int,
    first_pairid: int,
    used_bases: set[Scene],
    emit: Callable[[list[Variant]], None] = lambda variants: None,
) -> AmbiguousSplit:
    """Build every family of ``split``, then its records (valid targets need them all).

    ``emit`` receives each family's images as soon as they are drawn (to render them
    while the rest is built).
    """
    families = []
    for index in range(n_families):
        family = build_ambiguous_family(cfg, split, index, first_family_id + index, used_bases)
        emit(family.variants)
        families.append(family)
    variants = [v for f in families for v in f.variants]
    index: dict[Signature, list[str]] = {}
    for var in variants:
        index.setdefault(signature(var.objects), []).append(var.name)
    gallery = [v.name for v in variants]
    records: list[dict[str, Any]] = []
    s_idx = SPLITS.index(split)
    for i, family in enumerate(families):
        seed = [cfg.seed, s_idx, i]
        records += _family_records(cfg, family, index, gallery, first_pairid + len(records), seed)
    scenes = {v.name: [o.as_dict() for o in v.objects] for v in variants}
    stats = valid_target_stats(records)
    stats["near_misses"] = sum(len(r["edit"]["near_misses"]) for r in records)
    return AmbiguousSplit(variants, records, scenes, stats)
