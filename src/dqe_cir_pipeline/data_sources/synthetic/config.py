"""The generator's settings (:class:`SyntheticConfig`), its tiers, splits and format version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

#: Bumped whenever the generator's output for a given config changes; part of the hash.
FORMAT_VERSION = 1
#: Written into the manifest; a folder whose manifest names another generator is never
#: overwritten.
GENERATOR_NAME = "dqe_cir_pipeline.data_sources.synthetic"
#: Written in this order; a family's seed holds its split's index here, so a split appended
#: at the end never changes the earlier splits' files.
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: ``unique``: one valid target per query (one edit per variant). ``ambiguous``: captions
#: leave sizes unsaid, so several gallery images satisfy a query (see :mod:`.ambiguous`).
TIERS: tuple[str, ...] = ("unique", "ambiguous")
#: Bumped whenever the ambiguous tier's output for a given config changes; hashed with it.
AMBIGUOUS_FORMAT_VERSION = 1
#: Fields only the ambiguous tier reads. Left out of the unique tier's hash and manifest,
#: so adding them changed no byte of the unique benchmark.
AMBIGUOUS_FIELDS: tuple[str, ...] = (
    "tier",
    "queries_per_family",
    "valid_count_weights",
    "near_misses_per_attribute",
)
#: Fields only the unique tier reads; left out of the ambiguous tier's hash and manifest.
UNIQUE_FIELDS: tuple[str, ...] = ("variants_per_family", "train_variants_per_family")


@dataclass(frozen=True)
class SyntheticConfig:
    """Configuration of the synthetic benchmark.

    Attributes:
        seed: Master seed; every family draws from ``SeedSequence([seed, split, index])``.
        image_size: Side of the written square PNGs, in pixels.
        train_families: Number of scene families in the train split.
        val_families: Number of scene families in the val split (model selection).
        test_families: Number of families in the held-out test split (reported); 0 writes
            no test split. Drawn after val, so it never changes the train or val files.
        variants_per_family: Edited variants (= triplets) per val and test family; the
            text-blind Recall@K is about ``K / variants_per_family``.
        train_variants_per_family: Variants per train family (``None``: as val and test).
        object_count_weights: Probability of 1, 2, 3 objects in a base scene.
        share_color: Target share of colour-only edits.
        share_shape: Target share of shape-only edits.
        share_color_shape: Target share of colour+shape edits; the rest is "other"
            (size, position, add, remove; uniform over the feasible ones).
        distractors_per_triplet: Hard distractors in ``img_set.members`` (CIRR: 4).
        supersample: Render at this factor and box-downsample (anti-aliasing).
        position_jitter: Max sub-cell offset of an object per rendering, as a fraction
            of the cell side (nuisance, label-preserving).
        background_jitter: Max per-channel shade change of the background per rendering.
        png_compress_level: zlib level of the written PNGs (0-9).
        tier: ``unique`` (the fields above) or ``ambiguous`` (several valid targets per
            query; ``*_variants_per_family`` are then unused and the rest of the edit
            shares goes to two-object edits; see :func:`ambiguous_config`).
        queries_per_family: Ambiguous tier: queries (edits) per base scene.
        valid_count_weights: Ambiguous tier: probability of 1, 2, 3, ... images of its own
            family satisfying a query (capped by the 3**n size assignments of n objects).
        near_misses_per_attribute: Ambiguous tier: images per requested attribute that
            satisfy the query except that one attribute.
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
    tier: str = "unique"
    queries_per_family: int = 4
    valid_count_weights: tuple[float, ...] = (0.3, 0.3, 0.2, 0.2)
    near_misses_per_attribute: int = 1

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
        if self.tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {self.tier!r}")
        weights = tuple(self.valid_count_weights)
        if not weights or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("valid_count_weights must be non-negative with a positive sum")
        if self.queries_per_family < 1 or self.near_misses_per_attribute < 0:
            raise ValueError("queries_per_family must be >= 1, near_misses_per_attribute >= 0")

    def variants_for(self, split: str) -> int:
        """Edited variants (= triplets) per family in ``split`` (val and test: as many)."""
        if split == "train" and self.train_variants_per_family is not None:
            return self.train_variants_per_family
        return self.variants_per_family

    def settings(self) -> dict[str, Any]:
        """The fields that shape the output (written to the manifest, hashed).

        Each tier leaves out the fields only the other reads (:data:`AMBIGUOUS_FIELDS`,
        :data:`UNIQUE_FIELDS`).
        """
        unused = AMBIGUOUS_FIELDS if self.tier == "unique" else UNIQUE_FIELDS
        return {k: v for k, v in asdict(self).items() if k not in unused}

    def config_hash(self) -> str:
        """Return a stable sha256 of the config and the generator's format version."""
        payload: dict[str, Any] = {"format_version": FORMAT_VERSION, **self.settings()}
        if self.tier == "ambiguous":
            payload["ambiguous_format_version"] = AMBIGUOUS_FORMAT_VERSION
        text = json.dumps(payload, sort_keys=True, default=list)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


#: The ambiguous tier's defaults; ``conf/synthetic_ambiguous/parameters.yml`` selects the
#: same. Test size: the standard error of a recall measured on n independent queries is
#: sqrt(p (1 - p) / n); at most 0.5 points needs n >= p (1 - p) / 0.005**2 = 40,000 p (1 - p):
#: 7,500 queries for R@1 near 25 %, 10,000 for any p (p (1 - p) <= 1/4), which also bounds
#: an average of recalls (its standard deviation is at most the largest of theirs). Hence
#: 2,500 test families x 4 queries = 10,000 test queries. No single-object scenes: with
#: sizes free, a one-object query would also match many other families' images.
AMBIGUOUS_DEFAULTS: dict[str, Any] = {
    "tier": "ambiguous",
    "train_families": 750,
    "val_families": 250,
    "test_families": 2500,
    "queries_per_family": 4,
    "object_count_weights": (0.0, 0.5, 0.5),
    "share_color": 0.25,
    "share_shape": 0.25,
    "share_color_shape": 0.25,
    "position_jitter": 0.0,
    "background_jitter": 0,
}


def ambiguous_config(**overrides: Any) -> SyntheticConfig:
    """The ambiguous tier's default config (:data:`AMBIGUOUS_DEFAULTS`) with ``overrides``."""
    return replace(SyntheticConfig(), **{**AMBIGUOUS_DEFAULTS, **overrides})
