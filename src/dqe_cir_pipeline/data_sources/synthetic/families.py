"""Scene families: a base scene and its edited variants, and their CIRR-style records.

A family's variants each differ from the base by one edit; every variant is the target of
one triplet whose reference is the base, with the family's hardest look-alikes as the
``img_set`` distractors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dqe_cir_pipeline.data_sources.synthetic.config import SyntheticConfig
from dqe_cir_pipeline.data_sources.synthetic.edits import (
    apply_edit,
    caption,
    distractor_score,
    edit_labels,
    select_edits,
)
from dqe_cir_pipeline.data_sources.synthetic.scenes import (
    Scene,
    SceneObject,
    draw_fresh_base,
    family_rng,
    sample_background,
    sample_nuisance,
)


@dataclass
class Variant:
    """A family member before rendering: its objects, edit and caption (None for base)."""

    name: str
    objects: tuple[SceneObject, ...]
    edit: dict[str, Any] | None = None
    caption: str | None = None
    offsets: list[tuple[float, float]] = field(default_factory=list)
    background: tuple[int, int, int] = (128, 128, 128)


def image_name(split: str, family_id: int, variant: int) -> str:
    """Image name (no extension) of one family member; ``variant`` 0 is the base."""
    return f"syn_{split}_{family_id:04d}_{variant:02d}"


def build_family(
    cfg: SyntheticConfig, split: str, index: int, family_id: int, used_bases: set[Scene]
) -> list[Variant]:
    """Build one family (base first), deterministic in (seed, split, index).

    The base scene is redrawn while it equals a base of an earlier family (``used_bases``),
    so no scene family appears twice, in particular not in two splits.
    """
    rng = family_rng(cfg, split, index)
    base = draw_fresh_base(rng, cfg, used_bases)
    base_bg = sample_background(rng)
    keys = select_edits(rng, base, cfg, cfg.variants_for(split))
    order = rng.permutation(len(keys))  # variant numbers do not reveal the edit type
    variants = [Variant(image_name(split, family_id, 0), base)]
    for v, idx in enumerate(order, start=1):
        key = keys[int(idx)]
        edit = edit_labels(base, key)
        edit.update(family=family_id, variant=v)
        variants.append(
            Variant(
                image_name(split, family_id, v),
                apply_edit(base, key),
                edit=edit,
                caption=caption(rng, base, key),
            )
        )
    for var in variants:
        var.offsets, var.background = sample_nuisance(rng, var.objects, base_bg, cfg)
    return variants


def family_records(
    cfg: SyntheticConfig, variants: list[Variant], first_pairid: int, family_seed: Sequence[int]
) -> list[dict[str, Any]]:
    """One CIRR-style record per variant, reference = the family's base image."""
    rng = np.random.default_rng(np.random.SeedSequence([*family_seed, 7]))
    base = variants[0]
    records = []
    for t, target in enumerate(variants[1:]):
        assert target.edit is not None and target.caption is not None
        others = [v for v in variants[1:] if v is not target]
        tiebreak = rng.random(len(others))
        scores = [distractor_score(target.edit, o.edit or {}) for o in others]
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
