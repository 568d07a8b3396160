"""Scene sampling: objects, seeded base scenes, backgrounds and per-rendering nuisance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dqe_cir_pipeline.data_sources.synthetic.config import SPLITS, SyntheticConfig
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import (
    BACKGROUND_GRAY_RANGE,
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
)


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


Scene = tuple[SceneObject, ...]


def choice(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    """Pick one element of ``options`` with ``rng`` (works for any sequence)."""
    return options[int(rng.integers(len(options)))]


def sample_base_scene(rng: np.random.Generator, cfg: SyntheticConfig) -> Scene:
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


def sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    """Draw a family's background: one grey level plus a slight tint per channel."""
    gray = int(rng.integers(BACKGROUND_GRAY_RANGE[0], BACKGROUND_GRAY_RANGE[1] + 1))
    tr, tg, tb = (int(t) for t in rng.integers(-4, 5, size=3))
    return (gray + tr, gray + tg, gray + tb)


def sample_nuisance(
    rng: np.random.Generator,
    objects: Scene,
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


def family_rng(cfg: SyntheticConfig, split: str, index: int) -> np.random.Generator:
    """The seeded stream of family ``index`` of ``split``: ``(seed, split index, index)``."""
    return np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS.index(split), index]))


def draw_fresh_base(rng: np.random.Generator, cfg: SyntheticConfig, used: set[Scene]) -> Scene:
    """Draw base scenes until one is not in ``used``; add it there and return it.

    Keeps every family's base scene distinct, in particular across splits.
    """
    base = sample_base_scene(rng, cfg)
    while base in used:
        base = sample_base_scene(rng, cfg)
    used.add(base)
    return base


def benchmark_base_scenes(cfg: SyntheticConfig) -> set[Scene]:
    """The base scenes of every family of the benchmark generated with ``cfg``.

    Replays the seeded base-scene draws of the family builder without rendering, so it
    agrees exactly with the reference objects of the generated captions. A corpus meant
    to hold no benchmark scene excludes these.

    Returns:
        The base scenes, each a tuple of objects in canonical (row-major cell) order.
    """
    used: set[Scene] = set()
    for split in SPLITS:
        for index in range(int(getattr(cfg, f"{split}_families", 0))):
            draw_fresh_base(family_rng(cfg, split, index), cfg, used)
    return used
