"""Rendering: a scene's shapes drawn with PIL on a plain background, anti-aliased."""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw

from dqe_cir_pipeline.data_sources.synthetic.scenes import SceneObject
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import COLORS, POSITIONS, SIZES


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

    Shapes are scaled so their visual areas are comparable: polygons with
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
