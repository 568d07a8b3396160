"""Keyword lexicons that guess which attribute a modification text edits.

[design] DQE-CIR builds colour and shape sub-queries and applies an attribute's margin
only to queries whose modification text edits that attribute, so every triplet needs two
flags: does the text edit colour, does it edit shape? Real benchmarks do not label this,
so for FashionIQ and CIRR we fall back to this keyword heuristic; the generated
benchmark records the exact flags and never uses it. The heuristic is
deliberately simple and inspectable:

* matching is case-insensitive and on word boundaries (``"red"`` matches ``"Red,"`` and
  ``"red-ish"`` but not ``"shredded"`` or ``"tired"``);
* every entry also matches its plural (``sleeve`` -> ``sleeves``, ``stripe`` ->
  ``stripes``, ``dress`` -> ``dresses``);
* a hyphen or space inside an entry matches a hyphen, a space or nothing (``v-neck``
  matches ``v neck`` and ``vneck``);
* comparative lightness words (``darker``, ``lighter``, ``brighter``) count as colour
  edits; size, length, fit, cut and pattern words count as shape edits.

Expect both false positives (``"lighter fabric"``) and misses (colour named only by an
object, ``"like the sky"``); the per-edit-type breakdowns are diagnostics, not labels.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: Colour names, colour modifiers and the words people use to ask for a colour change.
COLOR_WORDS: frozenset[str] = frozenset(
    {
        # generic
        "color",
        "colour",
        "colored",
        "coloured",
        "colorful",
        "colourful",
        "multicolor",
        "multicolored",
        "multi-colored",
        "multicolour",
        "colorless",
        "hue",
        "shade",
        "tone",
        "tint",
        "tinted",
        "monochrome",
        "monochromatic",
        "two-tone",
        "pastel",
        "neon",
        "metallic",
        "shiny",
        "shinier",
        "glossy",
        "sparkly",
        "glitter",
        "sequin",
        "sequined",
        # lightness / saturation and their comparatives
        "dark",
        "darker",
        "darkest",
        "light",
        "lighter",
        "lightest",
        "bright",
        "brighter",
        "brightest",
        "pale",
        "paler",
        "vivid",
        "vibrant",
        "muted",
        "faded",
        "dull",
        "duller",
        "bold",
        "bolder",
        # basic colour terms and their -er / -ish forms
        "red",
        "redder",
        "reddish",
        "orange",
        "orangey",
        "yellow",
        "yellowish",
        "green",
        "greener",
        "greenish",
        "blue",
        "bluer",
        "bluish",
        "blueish",
        "purple",
        "purplish",
        "violet",
        "pink",
        "pinker",
        "pinkish",
        "brown",
        "browner",
        "brownish",
        "black",
        "blacker",
        "white",
        "whiter",
        "gray",
        "grey",
        "grayer",
        "greyer",
        "grayish",
        "greyish",
        # named shades
        "crimson",
        "scarlet",
        "maroon",
        "burgundy",
        "wine",
        "cherry",
        "ruby",
        "rose",
        "coral",
        "salmon",
        "peach",
        "apricot",
        "rust",
        "copper",
        "bronze",
        "amber",
        "mustard",
        "gold",
        "golden",
        "lemon",
        "cream",
        "creamy",
        "ivory",
        "beige",
        "tan",
        "khaki",
        "camel",
        "taupe",
        "nude",
        "sand",
        "chocolate",
        "coffee",
        "mocha",
        "olive",
        "lime",
        "mint",
        "sage",
        "emerald",
        "jade",
        "teal",
        "turquoise",
        "aqua",
        "cyan",
        "navy",
        "cobalt",
        "royal blue",
        "sky blue",
        "denim",
        "indigo",
        "lavender",
        "lilac",
        "mauve",
        "plum",
        "magenta",
        "fuchsia",
        "charcoal",
        "silver",
        "platinum",
        "off-white",
        "blonde",
        "brunette",
        "colorblock",
        "color-block",
    }
)

#: Words about form: garment cut, length, fit, neckline, sleeves, patterns, and generic
#: geometric shape / size words for non-fashion images.
SHAPE_WORDS: frozenset[str] = frozenset(
    {
        # fashion: sleeves and shoulders
        "sleeve",
        "sleeved",
        "sleeveless",
        "short-sleeved",
        "long-sleeved",
        "cap sleeve",
        "strap",
        "strapped",
        "strapless",
        "spaghetti",
        "halter",
        "shoulder",
        "off-shoulder",
        "one-shoulder",
        "racerback",
        "tank",
        "cami",
        # fashion: neckline and collar
        "neck",
        "neckline",
        "v-neck",
        "crew neck",
        "crewneck",
        "scoop",
        "turtleneck",
        "collar",
        "collared",
        "collarless",
        "hood",
        "hooded",
        "hoodie",
        "button",
        "buttoned",
        "zipper",
        "zip",
        "belt",
        "belted",
        "pocket",
        # fashion: length and fit
        "length",
        "long",
        "longer",
        "short",
        "shorter",
        "mini",
        "midi",
        "maxi",
        "knee-length",
        "ankle",
        "floor-length",
        "cropped",
        "crop",
        "fit",
        "fitted",
        "fitting",
        "form-fitting",
        "loose",
        "looser",
        "tight",
        "tighter",
        "baggy",
        "flowy",
        "flowing",
        "flared",
        "flare",
        "a-line",
        "bodycon",
        "slim",
        "slimmer",
        "oversized",
        "ruffle",
        "ruffled",
        "pleated",
        "layered",
        "tiered",
        "wrap",
        "draped",
        "empire",
        "peplum",
        "skirt",
        "hem",
        "hemline",
        "cut",
        "cutout",
        "cut-out",
        "backless",
        "open back",
        # fashion: pattern and print (a form change, not a colour change)
        "pattern",
        "patterned",
        "print",
        "printed",
        "graphic",
        "logo",
        "stripe",
        "striped",
        "stripy",
        "plaid",
        "checkered",
        "checked",
        "polka",
        "dot",
        "dotted",
        "floral",
        "flower",
        "flowered",
        "paisley",
        "leopard",
        "animal print",
        "lace",
        "lacy",
        "embroidered",
        "solid",
        "plain",
        # generic shape and geometry
        "shape",
        "shaped",
        "circle",
        "circular",
        "round",
        "rounder",
        "square",
        "rectangle",
        "rectangular",
        "triangle",
        "triangular",
        "oval",
        "star",
        "heart",
        "diamond",
        "hexagon",
        "pentagon",
        "cross",
        "curved",
        "straight",
        "pointed",
        "pointy",
        # generic size and proportion
        "size",
        "bigger",
        "smaller",
        "larger",
        "big",
        "small",
        "large",
        "tall",
        "taller",
        "wide",
        "wider",
        "narrow",
        "narrower",
        "thin",
        "thinner",
        "thick",
        "thicker",
    }
)


def _entry_pattern(entry: str) -> str:
    """Regex for one lexicon entry: separators optional, plural suffix optional."""
    parts = re.split(r"[-\s]+", entry.strip().lower())
    body = r"[-\s]?".join(re.escape(p) for p in parts)
    return body + r"(?:s|es)?"


@lru_cache(maxsize=8)
def _compile(words: frozenset[str]) -> re.Pattern[str]:
    """Compile one alternation; longest entries first so multi-word entries win."""
    alternatives = sorted((_entry_pattern(w) for w in words), key=len, reverse=True)
    # Letters/digits on either side mean we are inside another word: no match there.
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(alternatives) + r")(?![a-z0-9])")


def attribute_flags(text: str) -> tuple[bool, bool]:
    """Guess whether a modification text edits colour and/or shape.

    [design] keyword heuristic, see the module docstring for its rules and limits.

    Args:
        text: The modification text (for FashionIQ both captions joined).

    Returns:
        ``(edits_color, edits_shape)``.
    """
    lowered = text.lower()
    return (
        _compile(COLOR_WORDS).search(lowered) is not None,
        _compile(SHAPE_WORDS).search(lowered) is not None,
    )
