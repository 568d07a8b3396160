"""The generator's settings (:class:`SyntheticConfig`), its splits and its format version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

#: Bumped whenever the generator's output for a given config changes; part of the hash.
FORMAT_VERSION = 1
#: Written into the manifest; a folder whose manifest names another generator is never
#: overwritten.
GENERATOR_NAME = "dqe_cir_pipeline.data_sources.synthetic"
#: Written in this order; a family's seed holds its split's index here, so a split appended
#: at the end never changes the earlier splits' files.
SPLITS: tuple[str, ...] = ("train", "val", "test")


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
