"""Tests of the generated benchmark's ambiguous tier: exact multi-target ground truth."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from dqe_cir_pipeline.data_sources.descriptions import benchmark_scenes
from dqe_cir_pipeline.data_sources.synthetic import (
    AMBIGUOUS_EDIT_TYPES,
    COLOR_WORDS,
    SHAPE_WORDS,
    SIZE_WORDS,
    Change,
    Request,
    SceneObject,
    SyntheticConfig,
    ambiguous_config,
    generate_benchmark,
    is_near_miss,
    satisfies,
    violations,
)
from dqe_cir_pipeline.data_sources.synthetic.satisfaction import scene_from_dicts

#: Some one-object scenes too: their requests match other families' images (sizes free),
#: the case where a family-local ground truth would be wrong.
SMALL = ambiguous_config(
    seed=5,
    train_families=16,
    val_families=4,
    test_families=24,
    object_count_weights=(0.3, 0.35, 0.35),
)
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("amb") / "bench"
    return root, generate_benchmark(root, SMALL)


def _records(root: Path, split: str) -> list[dict[str, Any]]:
    return json.loads((root / "captions" / f"cap.{split}.json").read_text())


def _scenes(root: Path, split: str) -> dict[str, list[dict[str, str]]]:
    return json.loads((root / "scenes" / f"scene.{split}.json").read_text())


def _spec_cells(edit: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The caption's meaning, written out plainly: cell -> required (colour, shape)."""
    cells = {o["position"]: [o["color"], o["shape"]] for o in edit["reference_objects"]}
    for change in edit["changes"]:
        cell = edit["reference_objects"][change["object"]]["position"]
        cells[cell][0 if change["attribute"] == "color" else 1] = change["to"]
    return {cell: (c, s) for cell, (c, s) in cells.items()}


def _cells(objects: list[dict[str, str]]) -> dict[str, tuple[str, str]]:
    return {o["position"]: (o["color"], o["shape"]) for o in objects}


# ------------------------------------------------------------------ exact ground truth


@pytest.mark.parametrize("split", SPLITS)
def test_listed_targets_are_exactly_the_satisfying_gallery_images(
    bench: tuple[Path, dict[str, Any]], split: str
) -> None:
    """Brute force over the split's whole gallery: valid iff listed, for every query."""
    root, _ = bench
    gallery = _scenes(root, split)
    split_map = json.loads((root / "image_splits" / f"split.{split}.json").read_text())
    assert set(gallery) == set(split_map)
    for rec in _records(root, split):
        edit = rec["edit"]
        request = Request.from_edit(edit)
        wanted = _spec_cells(edit)
        by_spec = {n for n, objs in gallery.items() if _cells(objs) == wanted}
        by_predicate = {
            n for n, objs in gallery.items() if satisfies(scene_from_dicts(objs), request)
        }
        assert by_spec == by_predicate == set(rec["target_soft"]), rec["pairid"]
        assert set(rec["target_soft"].values()) == {1.0}
        assert edit["valid_targets"] == sorted(by_spec) and edit["n_valid"] == len(by_spec)
        assert rec["target_hard"] in by_spec and rec["reference"] not in by_spec
        assert gallery[rec["target_hard"]] == edit["target_objects"]
        assert gallery[rec["reference"]] == edit["reference_objects"]


def test_near_misses_break_exactly_one_requested_attribute(
    bench: tuple[Path, dict[str, Any]],
) -> None:
    root, _ = bench
    for split in SPLITS:
        gallery = _scenes(root, split)
        for rec in _records(root, split):
            edit = rec["edit"]
            request = Request.from_edit(edit)
            wanted = _spec_cells(edit)
            requested = {
                (edit["reference_objects"][c["object"]]["position"], c["attribute"])
                for c in edit["changes"]
            }
            assert (
                len(edit["near_misses"]) == len(edit["changes"]) * SMALL.near_misses_per_attribute
            )
            assert rec["reference"] not in edit["near_misses"]
            for name in edit["near_misses"]:
                cells = _cells(gallery[name])
                assert set(cells) == set(wanted)  # same layout
                wrong = {
                    (cell, attr)
                    for cell in wanted
                    for k, attr in enumerate(("color", "shape"))
                    if cells[cell][k] != wanted[cell][k]
                }
                assert len(wrong) == 1 and wrong <= requested, (rec["pairid"], name)
                assert is_near_miss(scene_from_dicts(gallery[name]), request)


def test_the_predicate_on_hand_made_scenes() -> None:
    square = SceneObject("blue", "square", "small", "top left")
    circle = SceneObject("green", "circle", "large", "center")
    request = Request((square, circle), (Change(0, "color", "red"),))
    red_square = SceneObject("red", "square", "small", "top left")
    assert satisfies((red_square, circle), request)
    big = SceneObject("red", "square", "large", "top left")
    small_circle = SceneObject("green", "circle", "small", "center")
    assert satisfies((big, small_circle), request)  # sizes are never said
    assert not satisfies((square, circle), request)  # the reference itself
    assert violations((SceneObject("pink", "square", "small", "top left"), circle), request) == [
        ("requested", "top left", "color")
    ]
    star = SceneObject("red", "star", "small", "top left")
    assert violations((star, circle), request) == [("kept", "top left", "shape")]
    moved = SceneObject("red", "square", "small", "top")
    assert ("layout",) in violations((moved, circle), request)
    extra = SceneObject("white", "cross", "small", "bottom")
    assert violations((red_square, circle, extra), request) == [("layout",)]
    assert not satisfies((red_square,), request)
    assert not is_near_miss((star, circle), request)  # breaks a kept attribute


# ------------------------------------------------------------------ records and texts


def test_captions_state_the_requested_values_and_never_a_size(
    bench: tuple[Path, dict[str, Any]],
) -> None:
    root, _ = bench
    tables = {"color": COLOR_WORDS, "shape": SHAPE_WORDS}
    size_words = {w for words in SIZE_WORDS.values() for w in words}
    for split in SPLITS:
        for rec in _records(root, split):
            text = rec["caption"].lower()
            for change in rec["edit"]["changes"]:
                words = tables[change["attribute"]][change["to"]]
                assert any(re.search(rf"\b{re.escape(w)}\b", text) for w in words), text
            assert not any(re.search(rf"\b{re.escape(w)}\b", text) for w in size_words), text


def test_records_are_cirr_shaped_with_single_target_subsets(
    bench: tuple[Path, dict[str, Any]],
) -> None:
    root, _ = bench
    pairids = []
    for split in SPLITS:
        for rec in _records(root, split):
            pairids.append(rec["pairid"])
            members = rec["img_set"]["members"]
            assert len(members) == SMALL.distractors_per_triplet + 2
            assert len(set(members)) == len(members)
            assert rec["reference"] in members and rec["target_hard"] in members
            others = set(members) - {rec["target_hard"]}
            assert not others & set(rec["target_soft"])  # subset recall keeps one target
            edit = rec["edit"]
            assert edit["type"] in AMBIGUOUS_EDIT_TYPES and edit["tier"] == "ambiguous"
            assert edit["edits_color"] == any(c["attribute"] == "color" for c in edit["changes"])
            assert edit["edits_shape"] == any(c["attribute"] == "shape" for c in edit["changes"])
            n_objects = 2 if edit["type"] == "two_objects" else 1
            assert len(edit["objects"]) == n_objects
    assert len(pairids) == len(set(pairids))


def test_summary_reports_the_valid_target_distribution(
    bench: tuple[Path, dict[str, Any]],
) -> None:
    root, summary = bench
    assert summary["tier"] == "ambiguous"
    for split in SPLITS:
        records = _records(root, split)
        counts = [r["edit"]["n_valid"] for r in records]
        stats = summary["splits"][split]["valid_targets"]
        assert (
            stats["queries"]
            == len(records)
            == SMALL.queries_per_family * getattr(SMALL, f"{split}_families")
        )
        assert stats["mean"] == pytest.approx(statistics.mean(counts), abs=1e-4)
        assert stats["median"] == statistics.median(counts)
        assert stats["share_multiple"] == pytest.approx(
            sum(c > 1 for c in counts) / len(counts), abs=1e-4
        )
        assert sum(stats["histogram"].values()) == len(records)
    # the training split is ambiguous too: contrastive training meets valid negatives
    train = summary["splits"]["train"]["valid_targets"]
    assert train["share_multiple"] > 0.4 and train["max"] > 1
    assert summary["splits"]["test"]["valid_targets"]["share_outside_family"] > 0
    assert set(summary["edit_types"]) == set(AMBIGUOUS_EDIT_TYPES)


def test_pretraining_exclusion_covers_every_ambiguous_image(
    bench: tuple[Path, dict[str, Any]],
) -> None:
    root, _ = bench
    written = {
        tuple(sorted(scene_from_dicts(objs), key=lambda o: (o.position, o.color)))
        for split in SPLITS
        for objs in _scenes(root, split).values()
    }
    excluded = {
        tuple(sorted(s, key=lambda o: (o.position, o.color))) for s in benchmark_scenes(SMALL)
    }
    assert written == excluded


# ------------------------------------------------------------ config and determinism


def test_deterministic_and_tier_sensitive(tmp_path: Path) -> None:
    small = ambiguous_config(train_families=3, val_families=2, test_families=2)
    first = generate_benchmark(tmp_path / "a", small)
    second = generate_benchmark(tmp_path / "b", small)
    assert first["config_hash"] == second["config_hash"]
    for split in SPLITS:
        for folder in ("captions/cap", "scenes/scene"):
            a = (tmp_path / "a" / f"{folder}.{split}.json").read_bytes()
            assert a == (tmp_path / "b" / f"{folder}.{split}.json").read_bytes()
    unique = SyntheticConfig()
    assert unique.config_hash() != ambiguous_config().config_hash()
    assert "tier" not in unique.settings() and "queries_per_family" not in unique.settings()
    assert "variants_per_family" not in ambiguous_config().settings()
    # the unique tier's hash is the one it had before the tiers existed
    assert unique.config_hash() == (
        "c31da78abd439c9b03cf86abb8c419b92da6fef6ba55e51b5d58efe10f8623e6"
    )


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="tier"):
        SyntheticConfig(tier="fuzzy")
    with pytest.raises(ValueError, match="valid_count_weights"):
        ambiguous_config(valid_count_weights=(0.0, 0.0))
    with pytest.raises(ValueError, match="queries_per_family"):
        ambiguous_config(queries_per_family=0)


def test_default_test_split_bounds_the_sampling_error() -> None:
    """SE of a recall = sqrt(p (1 - p) / n) <= 0.5 points for any p, so also at R@1 ~ 25 %."""
    cfg = ambiguous_config()
    n = cfg.test_families * cfg.queries_per_family
    assert math.sqrt(0.25 * 0.75 / n) <= 0.005  # R@1 near 25 %: n >= 7,500
    assert math.sqrt(0.25 / n) <= 0.005  # any p, hence any average of recalls: n >= 10,000


def test_conf_env_selects_the_tier_defaults() -> None:
    from dqe_cir_pipeline.config_loader import project_config_loader
    from dqe_cir_pipeline.data_sources.config import DataConfig

    params = project_config_loader("synthetic_ambiguous")["parameters"]
    data = DataConfig(**params["data"])
    assert data.benchmark == "synthetic"
    assert data.generator().config_hash() == ambiguous_config().config_hash()
    assert "synthetic_ambiguous" in str(data.synthetic.root)
    assert "synthetic_ambiguous" in str(params["pretraining"]["corpus_root"])
