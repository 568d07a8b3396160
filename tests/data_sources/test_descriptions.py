"""Tests of the described-scene corpus (BLIP-2 stage-1 pretraining data)."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources import descriptions as desc
from dqe_cir_pipeline.data_sources import phrasing
from dqe_cir_pipeline.data_sources.descriptions import (
    CorpusConfig,
    corpus_vocabulary,
    describe,
    generate_corpus,
    read_corpus,
)
from dqe_cir_pipeline.data_sources.synthetic import (
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
    SceneObject,
    SyntheticConfig,
    benchmark_base_scenes,
    generate_benchmark,
)
from dqe_cir_pipeline.data_sources.synthetic.scenes import sample_base_scene

Scene = tuple[SceneObject, ...]

# A test split only where the benchmark config has one (it may be added later).
_TEST_SPLIT = (
    {"test_families": 3} if "test_families" in {f.name for f in fields(SyntheticConfig)} else {}
)
BENCH = SyntheticConfig(
    seed=11, train_families=6, val_families=4, variants_per_family=5, **_TEST_SPLIT
)
CORPUS = CorpusConfig(n_scenes=150)

_TABLES: dict[str, dict[str, tuple[str, ...]]] = {
    "color": COLOR_WORDS,
    "shape": SHAPE_WORDS,
    "size": SIZE_WORDS,
    "position": POSITION_WORDS,
}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny benchmark, generated once for the read-only tests of this module."""
    root = tmp_path_factory.mktemp("bench") / "benchmark"
    generate_benchmark(root, BENCH)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A small corpus excluding the tiny benchmark's base scenes."""
    root = tmp_path_factory.mktemp("corpus") / "corpus"
    return root, generate_corpus(root, CORPUS, benchmark_base_scenes(BENCH))


def _caption_records(root: Path) -> list[dict[str, Any]]:
    files = sorted((root / "captions").glob("cap.*.json"))
    assert files
    return [rec for f in files for rec in json.loads(f.read_text())]


def _recorded_bases(root: Path) -> set[Scene]:
    """Base scenes as the generated captions record them (``edit.reference_objects``)."""
    return {
        tuple(SceneObject(**o) for o in rec["edit"]["reference_objects"])
        for rec in _caption_records(root)
    }


def _corpus_scenes(root: Path) -> list[Scene]:
    records = json.loads((root / "corpus.json").read_text())
    return [tuple(SceneObject(**o) for o in rec["objects"]) for rec in records]


def _words(text: str) -> set[str]:
    """Words as the project's lowercase BERT pre-tokenizer splits them."""
    return set(re.findall(r"\w+|[^\w\s]", text.lower()))


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# Every synonym of every table, longest first: a longer synonym ("top left corner",
# "lemon yellow") is consumed before the shorter one it contains ("top", "yellow").
_SYNONYMS = sorted(
    ((attr, label, word) for attr, t in _TABLES.items() for label, ws in t.items() for word in ws),
    key=lambda x: -len(x[2]),
)


def _decode(description: str) -> set[SceneObject]:
    """Read the objects back from a description, one object per phrase."""
    objects = set()
    for segment in re.split(r"[,:;]| and also | as well as | and ", description.lower()):
        found: dict[str, set[str]] = {attr: set() for attr in _TABLES}
        for attr, label, word in _SYNONYMS:
            pattern = rf"(?<![\w-]){re.escape(word)}(?![\w-])"
            if re.search(pattern, segment):
                found[attr].add(label)
                segment = re.sub(pattern, "#", segment)
        if not any(found.values()):
            continue  # e.g. "Two shapes" before the colon
        assert all(len(v) == 1 for v in found.values()), (description, found)
        objects.add(SceneObject(*(next(iter(found[a])) for a in _TABLES)))
    return objects


# --------------------------------------------------------------------------- describe


def test_describe_states_every_attribute_of_every_object() -> None:
    rng = np.random.default_rng(0)
    cfg = SyntheticConfig()
    for _ in range(400):
        scene = sample_base_scene(rng, cfg)
        for _ in range(3):
            text = describe(scene, rng)
            assert _decode(text) == set(scene), text
            assert text[0].isupper()
            assert not re.search(r"\b[Aa] [aeiou]", text), text  # "a" before a vowel
            assert not re.search(r"\b[Aa]n [^aeiou]", text), text  # "an" before a consonant


def test_describe_varies_words_phrasing_and_order() -> None:
    rng = np.random.default_rng(1)
    scene = (
        SceneObject("red", "star", "large", "top left"),
        SceneObject("blue", "circle", "small", "center"),
        SceneObject("orange", "cross", "medium", "bottom right"),
    )
    texts = [describe(scene, rng) for _ in range(300)]
    assert len(set(texts)) > 250
    first_named = {min(_decode_positions(t), key=lambda kv: kv[1])[0] for t in texts}
    assert first_named == {"red", "blue", "orange"}  # every object comes first sometimes
    for form in phrasing.SCENE_FORMS:  # every whole-description form is used
        head = form.split("{")[0].strip()
        assert any(t.lower().startswith(head) for t in texts), form


def _decode_positions(text: str) -> list[tuple[str, int]]:
    """(colour label, offset of its first synonym) for each colour named in ``text``."""
    out = []
    for label, words in COLOR_WORDS.items():
        hits = [m.start() for w in words for m in re.finditer(rf"\b{re.escape(w)}\b", text)]
        if hits:
            out.append((label, min(hits)))
    return out


def test_describe_is_seeded_and_checks_the_object_count() -> None:
    scene = (SceneObject("green", "hexagon", "small", "left"),)
    assert describe(scene, np.random.default_rng(3)) == describe(scene, np.random.default_rng(3))
    with pytest.raises(ValueError, match="1-3 objects"):
        describe((), np.random.default_rng(0))
    with pytest.raises(ValueError, match="1-3 objects"):
        describe(scene * 4, np.random.default_rng(0))


# ------------------------------------------------------------------- benchmark scenes


def test_benchmark_base_scenes_agree_with_the_generated_captions(bench: Path) -> None:
    expected = _recorded_bases(bench)
    n_families = sum(getattr(BENCH, f"{s}_families", 0) for s in ("train", "val", "test"))
    assert len(expected) == n_families
    assert benchmark_base_scenes(BENCH) == expected


def test_benchmark_scenes_hold_every_reference_and_target(bench: Path) -> None:
    recorded = {
        desc._canonical(SceneObject(**o) for o in rec["edit"][key])
        for rec in _caption_records(bench)
        for key in ("reference_objects", "target_objects")
    }
    scenes = desc.benchmark_scenes(BENCH)
    assert scenes == recorded
    assert benchmark_base_scenes(BENCH) < scenes
    generate_corpus(bench.parent / "strict", CORPUS, scenes)
    assert not set(_corpus_scenes(bench.parent / "strict")) & scenes


# ----------------------------------------------------------------------------- corpus


def test_corpus_holds_no_benchmark_scene_and_no_repeat(
    bench: Path, corpus: tuple[Path, dict[str, Any]]
) -> None:
    root, summary = corpus
    scenes = _corpus_scenes(root)
    assert len(scenes) == len(set(scenes)) == CORPUS.n_scenes == summary["images"]
    assert not set(scenes) & _recorded_bases(bench)
    assert {len(s) for s in scenes} == {1, 2, 3}
    assert summary["descriptions"] == CORPUS.n_scenes * CORPUS.descriptions_per_scene


def test_exclusion_is_enforced(tmp_path: Path) -> None:
    # Exclude every single-object scene: the corpus must then hold none.
    singles = {
        (SceneObject(c, s, z, p),)
        for c, s, z, p in itertools.product(COLORS, SHAPES, SIZES, POSITIONS)
    }
    summary = generate_corpus(tmp_path / "c", CorpusConfig(n_scenes=60), singles)
    assert summary["rejected_excluded"] > 0
    assert all(len(s) > 1 for s in _corpus_scenes(tmp_path / "c"))


def test_corpus_files_and_images(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, _ = corpus
    records = json.loads((root / "corpus.json").read_text())
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config_hash"] == CORPUS.config_hash()
    assert manifest["exclusion_hash"] == desc.exclusion_hash(benchmark_base_scenes(BENCH))
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(
        Path(r["path"]).name for r in records
    )
    for rec in records[:10]:
        assert not Path(rec["path"]).is_absolute()
        assert len(set(rec["descriptions"])) == CORPUS.descriptions_per_scene
        scene = {SceneObject(**o) for o in rec["objects"]}
        assert all(_decode(t) == scene for t in rec["descriptions"])
        with Image.open(root / rec["path"]) as img:
            assert img.mode == "RGB" and img.size == (CORPUS.image_size,) * 2
            corner = img.getpixel((0, 0))
        assert all(95 <= v <= 155 for v in corner)  # the benchmark's grey backgrounds


def test_generation_is_idempotent_deterministic_and_config_sensitive(tmp_path: Path) -> None:
    cfg = CorpusConfig(n_scenes=40)
    exclude = {(SceneObject("red", "star", "large", "center"),)}
    first = generate_corpus(tmp_path / "a", cfg, exclude)
    before = _tree_bytes(tmp_path / "a")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*")}

    again = generate_corpus(tmp_path / "a", cfg, set(exclude))
    assert again["reused"] and not first["reused"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob("*")} == mtimes
    assert again["images"] == first["images"]

    generate_corpus(tmp_path / "b", cfg, exclude)  # same inputs elsewhere: same bytes
    assert _tree_bytes(tmp_path / "b") == before

    changed = generate_corpus(tmp_path / "a", CorpusConfig(n_scenes=40, seed=2), exclude)
    assert not changed["reused"] and changed["config_hash"] != first["config_hash"]
    assert _tree_bytes(tmp_path / "a") != before

    wider = generate_corpus(tmp_path / "b", cfg, exclude | {_corpus_scenes(tmp_path / "b")[0]})
    assert not wider["reused"] and wider["exclusion_hash"] != first["exclusion_hash"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_foreign_directory_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not written by"):
        generate_corpus(tmp_path / "c", CorpusConfig(n_scenes=5), set())
    assert (tmp_path / "c" / "notes.txt").read_text() == "mine"


def test_config_validation_and_hash() -> None:
    with pytest.raises(ValueError):
        CorpusConfig(n_scenes=0)
    with pytest.raises(ValueError):
        CorpusConfig(position_jitter=0.7)
    assert CorpusConfig().config_hash() == CorpusConfig().config_hash()
    assert CorpusConfig(descriptions_per_scene=4).config_hash() != CorpusConfig().config_hash()


# ------------------------------------------------------------------------------- read


def test_read_corpus_round_trip(corpus: tuple[Path, dict[str, Any]]) -> None:
    root, _ = corpus
    frame = read_corpus(root)
    records = json.loads((root / "corpus.json").read_text())
    assert list(frame.columns) == ["image_id", "path", "descriptions", "n_objects"]
    assert frame["image_id"].tolist() == [r["image_id"] for r in records]
    assert frame["descriptions"].tolist() == [r["descriptions"] for r in records]
    assert frame["n_objects"].tolist() == [len(r["objects"]) for r in records]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["path"])


def test_read_corpus_fails_loudly_naming_the_file(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with pytest.raises(FileNotFoundError, match="corpus.json"):
        read_corpus(root)
    generate_corpus(root, CorpusConfig(n_scenes=5), set())
    path = root / "corpus.json"
    good = path.read_text()

    path.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path.resolve()))):
        read_corpus(root)

    records = json.loads(good)
    records[2]["descriptions"] = []
    path.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 2"):
        read_corpus(root)

    path.write_text(good)
    (root / records[0]["path"]).unlink()
    with pytest.raises(FileNotFoundError, match=records[0]["image_id"]):
        read_corpus(root)


# ------------------------------------------------------------------------- vocabulary


def test_vocabulary_covers_every_benchmark_caption(bench: Path) -> None:
    vocabulary = corpus_vocabulary()
    assert 500 < len(vocabulary) < 5000 and vocabulary == sorted(set(vocabulary))
    known = set().union(*map(_words, vocabulary))
    for rec in _caption_records(bench):
        assert _words(rec["caption"]) <= known, rec["caption"]


def test_vocabulary_covers_every_word_a_caption_or_description_can_use(
    corpus: tuple[Path, dict[str, Any]],
) -> None:
    known = set().union(*map(_words, corpus_vocabulary()))
    atoms: list[str] = [w for table in _TABLES.values() for ws in table.values() for w in ws]
    atoms += [t for ts in TEMPLATES.values() for t in ts]
    atoms += [p for ps in OBJECT_PHRASES.values() for p in ps]
    atoms += [*phrasing.OBJECT_FORMS, *phrasing.SCENE_FORMS, *phrasing.BACKGROUND_WORDS]
    atoms += [j for js in phrasing.JOINERS.values() for j in js]
    atoms += [c for cs in phrasing.COUNT_WORDS.values() for c in cs]
    atoms += [p for ws in POSITION_WORDS.values() for w in ws for p in phrasing.prepositions(w)]
    atoms += ["an", "is", "are"]
    for atom in atoms:
        words = _words(re.sub(r"\{\w*\}", " ", atom))
        assert words <= known, (atom, words - known)
    for t in read_corpus(corpus[0])["descriptions"].explode():
        assert _words(t) <= known, t
