"""The synthetic world's vocabulary: colours, shapes, sizes, cells, edit types and words.

Labels (the keys) are what annotations record; the ``*_WORDS`` tables, templates and
object phrases are what modification texts and scene descriptions are written with.
"""

from __future__ import annotations

import re

#: Object colours: label -> RGB. Saturated and far apart in RGB; none is grey, so the
#: grey background (see :data:`BACKGROUND_GRAY_RANGE`) can never be mistaken for one.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (245, 135, 20),
    "yellow": (245, 225, 30),
    "green": (35, 170, 55),
    "cyan": (30, 210, 220),
    "blue": (35, 70, 225),
    "purple": (135, 40, 185),
    "pink": (250, 120, 200),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

#: Words used for each colour in modification texts (first = the plain label).
COLOR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "lemon yellow"),
    "green": ("green", "emerald"),
    "cyan": ("cyan", "turquoise", "aqua"),
    "blue": ("blue", "royal blue"),
    "purple": ("purple", "violet"),
    "pink": ("pink", "hot pink"),
    "white": ("white", "snow white"),
    "black": ("black", "jet black"),
}

#: Shape labels; each has a dedicated renderer in :mod:`.rendering`. Squares and
#: diamonds are never rotated, so they stay distinct.
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "hexagon",
    "diamond",
    "crescent",
)

#: Words used for each shape in modification texts (first = the plain label).
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "round shape"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular shape"),
    "star": ("star", "five-pointed star"),
    "cross": ("cross", "plus sign", "plus"),
    "hexagon": ("hexagon", "six-sided shape"),
    "diamond": ("diamond", "rhombus", "lozenge"),
    "crescent": ("crescent", "moon", "crescent moon"),
}

#: Size label -> half-extent of the shape as a fraction of the grid-cell side. Large
#: shapes almost fill their cell; objects live in distinct cells so they never overlap
#: by more than the nuisance jitter allows.
SIZES: dict[str, float] = {"small": 0.28, "medium": 0.36, "large": 0.46}

#: Words used for each size in modification texts.
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "medium": ("medium-sized", "mid-sized", "medium"),
    "large": ("large", "big", "huge"),
}

#: Position label -> (row, column) of the 3 x 3 grid cell.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (0, 1),
    "top right": (0, 2),
    "left": (1, 0),
    "center": (1, 1),
    "right": (1, 2),
    "bottom left": (2, 0),
    "bottom": (2, 1),
    "bottom right": (2, 2),
}

#: Noun phrases for each position; texts use "at the <noun>" / "to the <noun>".
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top left": ("top left corner", "upper left corner", "top-left corner"),
    "top": ("top", "top middle", "upper middle"),
    "top right": ("top right corner", "upper right corner", "top-right corner"),
    "left": ("left side", "middle left", "left edge"),
    "center": ("center", "middle", "centre"),
    "right": ("right side", "middle right", "right edge"),
    "bottom left": ("bottom left corner", "lower left corner", "bottom-left corner"),
    "bottom": ("bottom", "bottom middle", "lower middle"),
    "bottom right": ("bottom right corner", "lower right corner", "bottom-right corner"),
}

#: Grey level range of the background (each family draws one, plus a tiny tint).
BACKGROUND_GRAY_RANGE: tuple[int, int] = (100, 150)

#: Edit types recorded in ``edit["type"]``; ``"color_shape"`` maps to the schema's
#: ``"both"`` bucket and the last four to ``"other"``.
EDIT_TYPES: tuple[str, ...] = ("color", "shape", "color_shape", "size", "position", "add", "remove")
OTHER_EDIT_TYPES: tuple[str, ...] = ("size", "position", "add", "remove")

#: Modification-text templates per edit type. Slots: ``{obj}`` (a phrase naming the
#: edited object of the reference), ``{color}``, ``{shape}``, ``{size}``, ``{pos}``
#: (synonyms drawn from the ``*_WORDS`` tables). "a" becomes "an" before a vowel.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "make {obj} {color}",
        "change the color of {obj} to {color}",
        "recolor {obj} {color}",
        "paint {obj} {color}",
        "turn {obj} {color}",
        "{obj} should be {color} instead",
    ),
    "shape": (
        "make {obj} a {shape}",
        "change {obj} into a {shape}",
        "turn {obj} into a {shape} of the same color",
        "replace {obj} with a {shape} of the same color",
        "reshape {obj} into a {shape}",
        "{obj} should be a {shape} instead",
    ),
    "color_shape": (
        "make {obj} a {color} {shape}",
        "turn {obj} into a {color} {shape}",
        "replace {obj} with a {color} {shape}",
        "change {obj} to a {color} {shape}",
        "swap {obj} for a {color} {shape}",
    ),
    "size": (
        "make {obj} {size}",
        "resize {obj} so that it is {size}",
        "scale {obj} to be {size}",
        "{obj} should be {size} instead",
    ),
    "position": (
        "move {obj} to the {pos}",
        "shift {obj} to the {pos}",
        "place {obj} at the {pos}",
        "relocate {obj} to the {pos}",
        "{obj} should be at the {pos} instead",
    ),
    "add": (
        "add a {size} {color} {shape} at the {pos}",
        "put a {size} {color} {shape} at the {pos}",
        "place an extra {size} {color} {shape} at the {pos}",
        "include a {size} {color} {shape} at the {pos}",
        "there should also be a {size} {color} {shape} at the {pos}",
    ),
    "remove": (
        "remove {obj}",
        "delete {obj}",
        "take away {obj}",
        "get rid of {obj}",
        "erase {obj}",
        "{obj} should be gone",
    ),
}

#: Edit types of the ambiguous tier; ``"two_objects"`` (one colour or shape change on each
#: of two objects) takes the share the unique tier gives to the "other" types.
AMBIGUOUS_EDIT_TYPES: tuple[str, ...] = ("color", "shape", "color_shape", "two_objects")

#: Clauses of a two-object caption, one per requested attribute (slots as in TEMPLATES).
CLAUSE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": ("make {obj} {color}", "paint {obj} {color}", "recolor {obj} {color}"),
    "shape": (
        "make {obj} a {shape}",
        "turn {obj} into a {shape}",
        "change {obj} into a {shape} of the same color",
    ),
}

#: How the two clauses of a two-object caption are joined.
CLAUSE_JOINERS: tuple[str, ...] = (
    "{first} and {second}",
    "{first}, and {second}",
    "{first}; also {second}",
    "{first}, then {second}",
)

#: Phrases naming an object of the reference scene. With a single object any of the
#: ``single`` forms identifies it; with several, base scenes have pairwise distinct
#: colours, shapes and cells, so each ``multi`` form is unambiguous.
OBJECT_PHRASES: dict[str, tuple[str, ...]] = {
    "single": ("the {shape}", "the {color} {shape}", "the shape", "the object"),
    "multi": (
        "the {shape}",
        "the {color} {shape}",
        "the {color} one",
        "the {color} shape",
        "the {shape} at the {pos}",
        "the object at the {pos}",
    ),
}

_ARTICLE_RE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")


def finish_sentence(text: str) -> str:
    """Fix the articles ("a" -> "an" before a vowel) and capitalise the first letter."""
    text = _ARTICLE_RE.sub(lambda m: m.group(1) + "n ", text)
    return text[0].upper() + text[1:]
