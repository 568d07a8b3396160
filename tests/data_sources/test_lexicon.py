"""Tests for the colour / shape keyword heuristic."""

from __future__ import annotations

import pytest

from dqe_cir_pipeline.data_sources.lexicon import COLOR_WORDS, SHAPE_WORDS, attribute_flags


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # real FashionIQ / CIRR captions
        ("is shiny and silver with shorter sleeves fit and flare", (True, True)),
        ("is grey with black design", (True, False)),
        ("has spaghetti straps and is satin material", (False, True)),
        ("show three bottles of soft drink", (False, False)),
        ("Is lighter with shorter sleeves", (True, True)),
        # generic shapes
        ("make the red circle a square", (True, True)),
        ("turn the triangle into a star", (False, True)),
        # comparatives count as colour edits
        ("is darker", (True, False)),
        ("Brighter!", (True, False)),
        ("", (False, False)),
    ],
)
def test_attribute_flags_on_examples(text: str, expected: tuple[bool, bool]) -> None:
    assert attribute_flags(text) == expected


def test_word_boundaries_reject_substrings() -> None:
    # "red" inside "shredded" / "tired" / "hundred", "tan" inside "stand", "fit" in "outfit"
    assert attribute_flags("a shredded, tired hundred stand outfit") == (False, False)


def test_case_punctuation_plurals_and_hyphens() -> None:
    assert attribute_flags("RED.") == (True, False)
    assert attribute_flags("(navy)") == (True, False)
    assert attribute_flags("red-ish tone") == (True, False)
    assert attribute_flags("has long SLEEVES, and stripes") == (False, True)
    for variant in ("v-neck", "v neck", "vneck", "V-Neck"):
        assert attribute_flags(f"has a {variant}") == (False, True), variant
    # a multi-word entry whose words are not entries themselves ("open back")
    for variant in ("an open back", "an open-back top", "an openback top"):
        assert attribute_flags(variant) == (False, True), variant


def test_lexicons_cover_the_documented_words() -> None:
    for w in (
        "red",
        "crimson",
        "navy",
        "beige",
        "khaki",
        "maroon",
        "teal",
        "color",
        "colour",
        "darker",
        "lighter",
        "brighter",
    ):
        assert w in COLOR_WORDS
    for w in (
        "sleeve",
        "sleeveless",
        "neckline",
        "v-neck",
        "collar",
        "length",
        "longer",
        "shorter",
        "fit",
        "fitted",
        "loose",
        "tight",
        "strapless",
        "pattern",
        "striped",
        "floral",
        "circle",
        "square",
    ):
        assert w in SHAPE_WORDS
    assert not COLOR_WORDS & SHAPE_WORDS
