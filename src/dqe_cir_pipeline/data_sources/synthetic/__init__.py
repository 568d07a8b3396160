"""Embedded synthetic composed-image-retrieval benchmark, written in the CIRR layout.

Small scenes (1-3 coloured shapes on a plain background on a 3 x 3 grid) in *families*
(a base scene and its one-edit variants), written where the CIRR reader looks::

    <root>/captions/cap.<split>.json         CIRR-style triplet records (+ an ``edit`` dict)
    <root>/image_splits/split.<split>.json   {image_name: "./<split>/<image_name>.png"}
    <root>/<split>/<image_name>.png          RGB, ``image_size`` x ``image_size``
    <root>/manifest.json                     config, config hash, summary

Seeded (same config: byte-identical files), idempotent and atomic. Modules: vocabulary,
config, scenes (sampling), edits, families, rendering, writing; the design is described
in docs/data.md.
"""

from __future__ import annotations

from dqe_cir_pipeline.data_sources.synthetic.config import (
    FORMAT_VERSION,
    SPLITS,
    SyntheticConfig,
)
from dqe_cir_pipeline.data_sources.synthetic.rendering import render_scene
from dqe_cir_pipeline.data_sources.synthetic.scenes import SceneObject, benchmark_base_scenes
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import (
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
    "SceneObject",
    "SyntheticConfig",
    "benchmark_base_scenes",
    "generate_benchmark",
    "render_scene",
]
