"""Tests of the embedded synthetic CIR benchmark generator."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources import synthetic as syn
from dqe_cir_pipeline.data_sources.schema import edit_type_of
from dqe_cir_pipeline.data_sources.synthetic import (
    COLOR_WORDS,
    COLORS,
    POSITION_WORDS,
    SHAPE_WORDS,
    SHAPES,
    SIZE_WORDS,
    SceneObject,
    SyntheticConfig,
    generate_benchmark,
    render_scene,
)
from dqe_cir_pipeline.data_sources.synthetic import writing as syn_writing

SMALL = SyntheticConfig(
    seed=3, train_families=8, val_families=6, test_families=5, variants_per_family=24
)
SPLITS = ("train", "val", "test")
N_FAMILIES = {"train": SMALL.train_families, "val": SMALL.val_families, "test": SMALL.test_families}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The small benchmark, generated once for the read-only tests of this module."""
    root = tmp_path_factory.mktemp("syn") / "bench"
    return root, generate_benchmark(root, SMALL)


def _records(root: Path, split: str) -> list[dict[str, Any]]:
    return json.loads((root / "captions" / f"cap.{split}.json").read_text())


def _split_map(root: Path, split: str) -> dict[str, str]:
    return json.loads((root / "image_splits" / f"split.{split}.json").read_text())


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _words_in(text: str, table: dict[str, tuple[str, ...]]) -> set[str]:
    """Labels of ``table`` whose words occur in ``text`` as whole words."""
    text = text.lower()
    return {
        label
        for label, words in table.items()
        if any(re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text) for w in words)
    }


# ----------------------------------------------------------------------------- layout


def test_layout_and_summary(bench: tuple[Path, dict[str, Any]]) -> None:
    root, summary = bench
    assert not summary["reused"]
    assert list(summary["splits"]) == list(SPLITS) == list(syn.SPLITS)
    for split in SPLITS:
        assert (root / "captions" / f"cap.{split}.json").is_file()
        assert (root / "image_splits" / f"split.{split}.json").is_file()
        records = _records(root, split)
        n_fam = N_FAMILIES[split]
        assert len(records) == n_fam * SMALL.variants_per_family
        assert len(_split_map(root, split)) == n_fam * (SMALL.variants_per_family + 1)
        assert summary["splits"][split]["triplets"] == len(records)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config_hash"] == SMALL.config_hash()
    assert manifest["config"]["variants_per_family"] == SMALL.variants_per_family
    assert sum(summary["edit_types"].values()) == summary["triplets"]
    # No temporary sibling is left behind.
    assert [p.name for p in root.parent.iterdir()] == ["bench"]


def test_record_schema(bench: tuple[Path, dict[str, Any]]) -> None:
    root, _ = bench
    pairids: list[int] = []
    for split in SPLITS:
        for rec in _records(root, split):
            assert set(rec) == {
                "pairid",
                "reference",
                "caption",
                "target_hard",
                "target_soft",
                "img_set",
                "edit",
            }
            assert isinstance(rec["pairid"], int) and isinstance(rec["img_set"]["id"], int)
            pairids.append(rec["pairid"])
            members = rec["img_set"]["members"]
            assert len(members) == 6 and len(set(members)) == 6
            assert rec["reference"] in members and rec["target_hard"] in members
            assert rec["reference"] != rec["target_hard"]
            assert rec["target_soft"] == {rec["target_hard"]: 1.0}
            edit = rec["edit"]
            assert edit["type"] in syn.EDIT_TYPES
            assert edit["edits_color"] == (edit["type"] in ("color", "color_shape"))
            assert edit["edits_shape"] == (edit["type"] in ("shape", "color_shape"))
            assert edit_type_of(edit["edits_color"], edit["edits_shape"]) in (
                "color",
                "shape",
                "both",
                "other",
            )
            # Hard distractors come from the same family as reference and target.
            fam = f"syn_{split}_{edit['family']:04d}_"
            assert all(m.startswith(fam) for m in members)
            assert rec["caption"] and rec["caption"][0].isupper()
    assert len(pairids) == len(set(pairids))


def test_target_is_reference_plus_exact_edit(bench: tuple[Path, dict[str, Any]]) -> None:
    root, _ = bench
    for split in SPLITS:
        for rec in _records(root, split):
            e = rec["edit"]
            ref = [SceneObject(**o) for o in e["reference_objects"]]
            tgt = [SceneObject(**o) for o in e["target_objects"]]
            expected = list(ref)
            if e["type"] == "add":
                expected.append(SceneObject(**e["to"]))
            elif e["type"] == "remove":
                assert e["from"] == ref[e["object"]].as_dict()
                del expected[e["object"]]
            else:
                old = ref[e["object"]].as_dict()
                assert e["from"] == {k: old[k] for k in e["to"]}
                assert all(old[k] != v for k, v in e["to"].items())
                expected[e["object"]] = SceneObject(**{**old, **e["to"]})
            assert tgt == expected
            # Objects occupy distinct cells (no bad overlaps).
            assert len({o.position for o in tgt}) == len(tgt)


def test_captions_match_labels(bench: tuple[Path, dict[str, Any]]) -> None:
    root, _ = bench
    for rec in [r for s in SPLITS for r in _records(root, s)]:
        e, text = rec["edit"], rec["caption"]
        ref_colors = {o["color"] for o in e["reference_objects"]}
        ref_shapes = {o["shape"] for o in e["reference_objects"]}
        colors, shapes = _words_in(text, COLOR_WORDS), _words_in(text, SHAPE_WORDS)
        to = e["to"]
        if "color" in to:
            assert to["color"] in colors, text
        if "shape" in to:
            assert to["shape"] in shapes, text
        if "size" in to:
            assert to["size"] in _words_in(text, SIZE_WORDS), text
        if "position" in to:
            assert to["position"] in _words_in(text, POSITION_WORDS), text
        # Attributes that are not edited are never mentioned with a new value.
        if not e["edits_color"] and e["type"] != "add":
            assert colors <= ref_colors, text
        if not e["edits_shape"] and e["type"] != "add":
            assert shapes <= ref_shapes, text
        if e["type"] == "remove":
            assert re.search(r"remove|delete|take away|get rid|erase|gone", text.lower())


def test_reference_scenes_are_identifiable(bench: tuple[Path, dict[str, Any]]) -> None:
    """Distinct colours, shapes and cells in a base scene make object phrases unique."""
    root, _ = bench
    for rec in _records(root, "val") + _records(root, "test"):
        objs = rec["edit"]["reference_objects"]
        for attr in ("color", "shape", "position"):
            assert len({o[attr] for o in objs}) == len(objs)
        assert 1 <= len(objs) <= 3


def test_images_exist_decode_and_have_the_right_size(bench: tuple[Path, dict[str, Any]]) -> None:
    root, _ = bench
    for split in SPLITS:
        split_map = _split_map(root, split)
        for name, rel in split_map.items():
            assert rel == f"./{split}/{name}.png"
        for rec in _records(root, split):
            for name in [rec["reference"], rec["target_hard"], *rec["img_set"]["members"]]:
                assert name in split_map
        for rel in list(split_map.values())[:40]:
            with Image.open(root / rel) as img:
                assert img.format == "PNG" and img.mode == "RGB"
                assert img.size == (SMALL.image_size, SMALL.image_size)
        assert len(list((root / split).glob("*.png"))) == len(split_map)


def test_edit_type_shares(bench: tuple[Path, dict[str, Any]]) -> None:
    root, _ = bench
    records = [r for s in SPLITS for r in _records(root, s)]
    counts = Counter(
        edit_type_of(r["edit"]["edits_color"], r["edit"]["edits_shape"]) for r in records
    )
    shares = {k: v / len(records) for k, v in counts.items()}
    for bucket, target in {"color": 0.25, "shape": 0.25, "both": 0.20, "other": 0.30}.items():
        assert abs(shares[bucket] - target) < 0.03, shares
    others = Counter(
        r["edit"]["type"] for r in records if r["edit"]["type"] in syn.OTHER_EDIT_TYPES
    )
    assert set(others) == set(syn.OTHER_EDIT_TYPES)


def test_families_are_disjoint_across_splits(bench: tuple[Path, dict[str, Any]]) -> None:
    """No family, base scene or image is shared by two of train, val and test."""
    root, _ = bench
    fams = {s: {r["edit"]["family"] for r in _records(root, s)} for s in SPLITS}
    bases = {
        s: {json.dumps(r["edit"]["reference_objects"], sort_keys=True) for r in _records(root, s)}
        for s in SPLITS
    }
    for split in SPLITS:
        assert len(fams[split]) == len(bases[split]) == N_FAMILIES[split]
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not fams[a] & fams[b], (a, b)
            assert not bases[a] & bases[b], (a, b)
            assert not set(_split_map(root, a)) & set(_split_map(root, b)), (a, b)


def test_test_families_have_the_val_variant_count(tmp_path: Path) -> None:
    cfg = SyntheticConfig(
        train_families=2,
        val_families=1,
        test_families=2,
        variants_per_family=8,
        train_variants_per_family=6,
    )
    assert cfg.variants_for("test") == cfg.variants_for("val") == 8
    summary = generate_benchmark(tmp_path / "b", cfg)
    assert summary["splits"]["train"]["triplets"] == 2 * 6
    assert summary["splits"]["val"]["triplets"] == 1 * 8
    assert summary["splits"]["test"]["triplets"] == 2 * 8


def test_adding_the_test_split_leaves_train_and_val_byte_identical(
    bench: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Test families are drawn after val: numbers on train and val never move."""
    root, _ = bench
    without = tmp_path / "no_test"
    summary = generate_benchmark(without, SyntheticConfig(**{**SMALL.__dict__, "test_families": 0}))
    assert list(summary["splits"]) == ["train", "val"]
    a, b = _tree_bytes(root), _tree_bytes(without)
    assert not any("test" in k for k in b)  # no test folder, captions or split file
    assert not (without / "test").exists()
    shared = {k: v for k, v in a.items() if "test" not in k and k != "manifest.json"}
    assert shared.keys() == b.keys() - {"manifest.json"}
    assert all(shared[k] == b[k] for k in shared)
    assert set(a) - set(shared) - {"manifest.json"} == {
        k for k in a if k.startswith("test/") or k.endswith(".test.json")
    }


# ------------------------------------------------------------- determinism / idempotence


def test_deterministic_and_seed_dependent(
    bench: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, _ = bench
    again = tmp_path / "again"
    generate_benchmark(again, SMALL)
    assert _tree_bytes(again) == _tree_bytes(root)

    other = tmp_path / "other"
    generate_benchmark(other, SyntheticConfig(**{**SMALL.__dict__, "seed": 4}))
    a, b = _tree_bytes(root), _tree_bytes(other)
    assert a["captions/cap.val.json"] != b["captions/cap.val.json"]
    shared_pngs = [k for k in a if k.endswith(".png") and k in b]
    assert any(a[k] != b[k] for k in shared_pngs)


def test_idempotent_and_regenerates_on_config_change(tmp_path: Path) -> None:
    cfg = SyntheticConfig(train_families=2, val_families=1, test_families=1, variants_per_family=10)
    root = tmp_path / "b"
    first = generate_benchmark(root, cfg)
    assert not first["reused"]
    stamp = (root / "captions" / "cap.train.json").stat().st_mtime_ns
    second = generate_benchmark(root, cfg)
    assert second["reused"] and second["triplets"] == first["triplets"]
    assert (root / "captions" / "cap.train.json").stat().st_mtime_ns == stamp

    changed = SyntheticConfig(
        train_families=3, val_families=1, test_families=1, variants_per_family=10
    )
    third = generate_benchmark(root, changed)
    assert not third["reused"] and third["splits"]["train"]["triplets"] == 30
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["config_hash"] == changed.config_hash() != cfg.config_hash()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_interrupted_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(syn_writing, "write_json", boom)
    with pytest.raises(RuntimeError):
        generate_benchmark(
            tmp_path / "b",
            SyntheticConfig(
                train_families=1, val_families=1, test_families=1, variants_per_family=6
            ),
        )
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    root = tmp_path / "b"
    root.mkdir()
    (root / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_benchmark(
            root,
            SyntheticConfig(
                train_families=1, val_families=1, test_families=1, variants_per_family=6
            ),
        )
    assert (root / "precious.txt").read_text() == "keep me"


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SyntheticConfig(image_size=8)
    with pytest.raises(ValueError):
        SyntheticConfig(share_color=0.6, share_shape=0.6)
    with pytest.raises(ValueError):
        SyntheticConfig(variants_per_family=4)
    with pytest.raises(ValueError, match="test_families"):
        SyntheticConfig(test_families=-1)
    with pytest.raises(ValueError):
        SyntheticConfig(val_families=0)
    assert SyntheticConfig(test_families=0).test_families == 0  # 0: no test split
    assert SyntheticConfig(test_families=0).config_hash() != SyntheticConfig().config_hash()
    assert SyntheticConfig().config_hash() == SyntheticConfig().config_hash()
    assert SyntheticConfig(seed=1).config_hash() != SyntheticConfig().config_hash()


# ----------------------------------------------------------------- rendering / vocab


def test_vocabulary_tables_are_consistent() -> None:
    assert len(COLORS) >= 8 and len(SHAPES) >= 6
    assert set(COLOR_WORDS) == set(COLORS) and set(SHAPE_WORDS) == set(SHAPES)
    assert set(POSITION_WORDS) == set(syn.POSITIONS) and set(SIZE_WORDS) == set(syn.SIZES)
    rgb = np.array(list(COLORS.values()), dtype=float)
    dists = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert dists[~np.eye(len(rgb), dtype=bool)].min() > 80  # clearly distinct colours
    lo, hi = syn.BACKGROUND_GRAY_RANGE
    for gray in (lo - 4, hi + 4):  # the extremes of the tinted background
        assert np.linalg.norm(rgb - gray, axis=1).min() > 80


def test_shapes_render_distinguishably() -> None:
    images = {
        s: np.asarray(
            render_scene([SceneObject("red", s, "small", "center")], (128, 128, 128)), dtype=float
        )
        for s in SHAPES
    }
    for s, img in images.items():
        assert img.shape == (64, 64, 3)
        assert (np.abs(img - 128).sum(axis=-1) > 30).sum() > 20, s  # the shape is drawn
    names = list(images)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            diff = np.abs(images[a] - images[b]).sum(axis=-1) > 60
            assert diff.sum() >= 8, (a, b)
