"""Embedded synthetic composed-image-retrieval benchmark, written in the CIRR layout.

Small scenes (1-3 coloured shapes on a plain background on a 3 x 3 grid) in *families*
(a base scene and its one-edit variants), written where the CIRR reader looks::

    <root>/captions/cap.<split>.json         CIRR-style triplet records (+ an ``edit`` dict)
    <root>/image_splits/split.<split>.json   {image_name: "./<split>/<image_name>.png"}
    <root>/<split>/<image_name>.png          RGB, ``image_size`` x ``image_size``
    <root>/manifest.json                     config, config hash, summary

Two tiers (``SyntheticConfig.tier``): ``unique`` (default), where each query has exactly
one valid target, and ``ambiguous`` (:func:`ambiguous_config`), where captions leave sizes
unsaid, so several gallery images satisfy a query; all are listed in ``target_soft``, and
``<root>/scenes/scene.<split>.json`` gives every image's labels.

Seeded (same config: byte-identical files), idempotent and atomic. Modules: vocabulary,
config, scenes (sampling), edits, families, rendering, writing; for the ambiguous tier
satisfaction (the ground-truth predicate), ambiguous (families), ambiguous_split (records).
The design is described in docs/data.md.
"""

from __future__ import annotations

from dqe_cir_pipeline.data_sources.synthetic.config import (
    AMBIGUOUS_DEFAULTS,
    FORMAT_VERSION,
    SPLITS,
    TIERS,
    SyntheticConfig,
    ambiguous_config,
)
from dqe_cir_pipeline.data_sources.synthetic.rendering import render_scene
from dqe_cir_pipeline.data_sources.synthetic.satisfaction import (
    Change,
    Request,
    is_near_miss,
    satisfies,
    violations,
)
from dqe_cir_pipeline.data_sources.synthetic.scenes import SceneObject, benchmark_base_scenes
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import (
    AMBIGUOUS_EDIT_TYPES,
    BACKGROUND_GRAY_RANGE,
    COLOR_WORDS,
    COLORS,
    EDIT_TYPES,
    OBJECT_PHRASES,
    OTHER_EDIT_TYPES,
    POSITION_WORDS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    TEMPLATES,
)
from dqe_cir_pipeline.data_sources.synthetic.writing import generate_benchmark

__all__ = [
    "AMBIGUOUS_DEFAULTS",
    "AMBIGUOUS_EDIT_TYPES",
    "BACKGROUND_GRAY_RANGE",
    "COLORS",
    "COLOR_WORDS",
    "EDIT_TYPES",
    "FORMAT_VERSION",
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
    "TIERS",
    "Change",
    "Request",
    "SceneObject",
    "SyntheticConfig",
    "ambiguous_config",
    "benchmark_base_scenes",
    "generate_benchmark",
    "is_near_miss",
    "render_scene",
    "satisfies",
    "violations",
]
