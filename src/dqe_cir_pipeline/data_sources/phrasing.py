"""Descriptions of generated scenes: the text side of the stage-1 pretraining corpus.

:func:`describe` names every object's size, colour, shape and position (synonyms and
phrasing vary, content never does); :func:`corpus_vocabulary` lists texts that cover
every word a description or a benchmark caption can contain, for the tokenizer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from dqe_cir_pipeline.data_sources.synthetic.scenes import SceneObject
from dqe_cir_pipeline.data_sources.synthetic.vocabulary import (
    COLOR_WORDS,
    COLORS,
    OBJECT_PHRASES,
    POSITION_WORDS,
    POSITIONS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    TEMPLATES,
    finish_sentence,
)

T = TypeVar("T")
Scene = tuple[SceneObject, ...]
Pick = Callable[[Sequence[T]], T]

# --------------------------------------------------------------------------------------
# Descriptions
# --------------------------------------------------------------------------------------

#: Phrases naming one object; every form states size, colour, shape and place
#: (``{where}`` = preposition + position noun). "a" becomes "an" before a vowel.
OBJECT_FORMS: tuple[str, ...] = (
    "a {size} {color} {shape} {where}",
    "a {size} {shape} in {color} {where}",
    "a {size} {color} {shape} located {where}",
    "a {size} {shape} colored {color} {where}",
)

#: How the object phrases of an ``n``-object scene are joined (``{0}``, ``{1}``, ...).
JOINERS: dict[int, tuple[str, ...]] = {
    1: ("{0}",),
    2: ("{0} and {1}", "{0}, and {1}", "{0} as well as {1}"),
    3: ("{0}, {1} and {2}", "{0}, {1}, and {2}", "{0}, {1}, and also {2}"),
}

#: Whole-description forms. Slots: ``{objs}`` (the joined object phrases), ``{count}``
#: (:data:`COUNT_WORDS`), ``{be}`` ("is" / "are") and ``{bg}`` (:data:`BACKGROUND_WORDS`).
SCENE_FORMS: tuple[str, ...] = (
    "{objs}",
    "there {be} {objs}",
    "an image of {objs}",
    "a picture showing {objs}",
    "a {bg} background with {objs}",
    "{objs} on a {bg} background",
    "this scene shows {objs}",
    "{count}: {objs}",
    "{count} on a {bg} background: {objs}",
    "the image contains {count}: {objs}",
)

#: Words for the number of objects, by count.
COUNT_WORDS: dict[int, tuple[str, ...]] = {
    1: ("one shape", "a single shape", "one object"),
    2: ("two shapes", "two objects"),
    3: ("three shapes", "three objects"),
}

#: Words for the (grey) background.
BACKGROUND_WORDS: tuple[str, ...] = ("gray", "grey", "plain gray", "plain grey")

_BE: dict[int, str] = {1: "is", 2: "are", 3: "are"}
_ORDERS: dict[int, tuple[tuple[int, ...], ...]] = {
    n: tuple(itertools.permutations(range(n))) for n in (1, 2, 3)
}
#: Random draws one description consumes: 5 per scene + 6 per object (fixed counts).
_SCENE_DRAWS = 5
_OBJECT_DRAWS = 6


def prepositions(position_word: str) -> tuple[str, ...]:
    """Prepositions (with "the") that read naturally before a position noun.

    Args:
        position_word: A noun phrase of :data:`~.synthetic.POSITION_WORDS`.

    Returns:
        "at the" always; "on the" for sides and edges, "in the" for corners, the centre
        and the "middle" cells (not for the bare "top" / "bottom").
    """
    last = position_word.rsplit(" ", 1)[-1]
    if last in ("side", "edge"):
        return ("on the", "at the")
    if last in ("top", "bottom"):
        return ("at the",)
    return ("in the", "at the")


def _object_text(obj: SceneObject, pick: Pick[Any]) -> str:
    """One phrase naming ``obj`` completely (draw order fixed: see ``_OBJECT_DRAWS``)."""
    pos_word = pick(POSITION_WORDS[obj.position])
    where = f"{pick(prepositions(pos_word))} {pos_word}"
    return pick(OBJECT_FORMS).format(
        size=pick(SIZE_WORDS[obj.size]),
        color=pick(COLOR_WORDS[obj.color]),
        shape=pick(SHAPE_WORDS[obj.shape]),
        where=where,
    )


def _compose(objects: Scene, pick: Pick[Any]) -> str:
    """A description of ``objects`` with every choice made by ``pick``."""
    n = len(objects)
    if n not in _ORDERS:
        raise ValueError(f"a scene holds 1-3 objects, got {n}")
    order = pick(_ORDERS[n])
    joined = pick(JOINERS[n]).format(*(_object_text(objects[j], pick) for j in order))
    text = pick(SCENE_FORMS).format(
        objs=joined, count=pick(COUNT_WORDS[n]), be=_BE[n], bg=pick(BACKGROUND_WORDS)
    )
    return finish_sentence(text)


def describe(objects: Sequence[SceneObject], rng: np.random.Generator) -> str:
    """One natural-language description of a scene.

    Every object's colour, shape, size and position is stated (with a synonym of
    :data:`~.synthetic.COLOR_WORDS`, :data:`~.synthetic.SHAPE_WORDS`,
    :data:`~.synthetic.SIZE_WORDS`, :data:`~.synthetic.POSITION_WORDS`); the phrasing
    (:data:`OBJECT_FORMS`, :data:`JOINERS`, :data:`SCENE_FORMS`), the words and the
    object order are drawn from ``rng``. Example: "There are a large crimson star in the
    upper left corner and a tiny blue disc at the center".

    Args:
        objects: The scene's 1-3 objects.
        rng: Source of the choices; one ``rng.random`` call per description.

    Returns:
        The description (first letter capitalised, "a" / "an" as the next word needs).

    Raises:
        ValueError: The scene does not hold 1-3 objects.
    """
    scene = tuple(objects)
    if not 1 <= len(scene) <= 3:
        raise ValueError(f"a scene holds 1-3 objects, got {len(scene)}")
    draws = iter(rng.random(_SCENE_DRAWS + _OBJECT_DRAWS * len(scene)).tolist())

    def pick(options: Sequence[T]) -> T:
        return options[int(next(draws) * len(options))]

    return _compose(scene, pick)


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


def _flat(table: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(w for words in table.values() for w in words)


def _template_texts() -> list[str]:
    """Every benchmark template, filled once per synonym of its longest slot table.

    Text ``i`` of a template takes entry ``i`` (cyclically) of every flattened synonym
    table and of the object phrases, and there are as many texts as the longest table,
    so every synonym, every object phrase and every template word occurs, with articles
    and capitalisation exactly as the benchmark's captions get them.
    """
    colors, shapes = _flat(COLOR_WORDS), _flat(SHAPE_WORDS)
    sizes, positions = _flat(SIZE_WORDS), _flat(POSITION_WORDS)
    phrases = OBJECT_PHRASES["single"] + OBJECT_PHRASES["multi"]
    rounds = max(len(t) for t in (colors, shapes, sizes, positions, phrases))
    texts = []
    for templates in TEMPLATES.values():
        for template in templates:
            for i in range(rounds):
                words = {
                    "color": colors[i % len(colors)],
                    "shape": shapes[i % len(shapes)],
                    "size": sizes[i % len(sizes)],
                    "pos": positions[i % len(positions)],
                }
                words["obj"] = phrases[i % len(phrases)].format(**words)
                texts.append(finish_sentence(template.format(**words)))
    return texts


def _cyclic(i: int, form: str | None = None) -> Pick[Any]:
    """A ``pick`` taking entry ``i`` (cyclically) of every list; ``form`` as scene form."""

    def pick(options: Sequence[T]) -> T:
        if form is not None and options is SCENE_FORMS:
            return form  # type: ignore[return-value]
        return options[i % len(options)]

    return pick


def _description_texts() -> list[str]:
    """Descriptions that together use every choice :func:`describe` can make.

    Round ``i`` picks entry ``i`` (cyclically) of every option list and ``rounds`` is at
    least the longest list, so every entry of every list is picked. Choices that only
    show in some contexts are crossed with those contexts: ``shift`` puts every cell
    first and ``rounds`` >= 6 = lcm(3, 2) pairs every position synonym with every
    preposition; every scene form is used in every round, so its count and background
    words all occur.
    """
    lists: list[Sequence[Any]] = [
        OBJECT_FORMS,
        SCENE_FORMS,
        BACKGROUND_WORDS,
        *JOINERS.values(),
        *COUNT_WORDS.values(),
        *_ORDERS.values(),
        *COLOR_WORDS.values(),
        *SHAPE_WORDS.values(),
        *SIZE_WORDS.values(),
        *POSITION_WORDS.values(),
    ]
    rounds = max(6, *(len(options) for options in lists))
    colors, shapes, sizes, cells = list(COLORS), list(SHAPES), list(SIZES), list(POSITIONS)

    def scene(n: int, i: int, shift: int) -> Scene:
        return tuple(
            SceneObject(
                colors[(i + j) % len(colors)],
                shapes[(i + j) % len(shapes)],
                sizes[(i + j) % len(sizes)],
                cells[(shift + 3 * j) % len(cells)],
            )
            for j in range(n)
        )

    texts = []
    for n in (1, 2, 3):
        for i in range(rounds):
            texts += [_compose(scene(n, i, shift), _cyclic(i)) for shift in range(len(cells))]
            texts += [_compose(scene(n, i, i), _cyclic(i, form)) for form in SCENE_FORMS]
    return texts


def corpus_vocabulary() -> list[str]:
    """Texts covering every word of the benchmark's captions and of the descriptions.

    A tokenizer trained on the corpus descriptions plus these texts knows every word a
    benchmark caption (:data:`~.synthetic.TEMPLATES` with every slot filled from the
    ``*_WORDS`` tables and :data:`~.synthetic.OBJECT_PHRASES`) or :func:`describe` can
    produce. Deterministic, sorted, without duplicates; about 1,500 short strings.

    Returns:
        The texts.
    """
    return sorted(set(_template_texts()) | set(_description_texts()))
