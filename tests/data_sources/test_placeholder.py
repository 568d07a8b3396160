"""Placeholder CIRR / FashionIQ trees read back by the real readers without a rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dqe_cir_pipeline.data_sources.cirr import read_cirr
from dqe_cir_pipeline.data_sources.common import dataset_fingerprint as fingerprint
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq
from dqe_cir_pipeline.data_sources.placeholder import PlaceholderConfig, write_benchmark

CFG = PlaceholderConfig(scale=0.01, train_queries=24, image_size=32, workers=2)


def test_cirr_tree_has_the_real_layout_and_reads_clean(tmp_path: Path) -> None:
    counts = write_benchmark("cirr", tmp_path, CFG)
    assert counts["val"] == {
        "queries": 42,
        "images": 18,
    }  # ceil(4181 * 0.01); 23 images -> 3 sets of 6
    split = json.loads((tmp_path / "annotations/image_splits/split.rc2.val.json").read_text())
    assert all(rel.startswith("./dev/dev-") and rel.endswith(".png") for rel in split.values())
    result = read_cirr(tmp_path / "annotations", tmp_path / "images")
    assert result.quarantine.empty
    t = result.triplets
    assert t.groupby("split").size().to_dict() == {"test1": 42, "train": 24, "val": 42}
    assert t.loc[t.split == "test1", "target_id"].isna().all()
    val = t[t.split == "val"]
    assert all(
        tgt in members and ref in members
        for tgt, ref, members in zip(
            val.target_id, val.reference_id, val.subset_members, strict=True
        )
    )
    # the run fingerprint copes with unlabelled test targets and is stable across a rerun
    before = fingerprint(result.images, t)
    assert write_benchmark("cirr", tmp_path, CFG)["images_written"] == 0
    again = read_cirr(tmp_path / "annotations", tmp_path / "images")
    assert fingerprint(again.images, again.triplets) == before


def test_fashioniq_tree_reads_clean_with_every_category(tmp_path: Path) -> None:
    counts = write_benchmark("fashioniq", tmp_path, CFG)
    assert counts["shirt/val"] == {"queries": 21, "images": 64}
    result = read_fashioniq(
        tmp_path / "annotations", tmp_path / "images", FashionIQConfig(splits=("train", "val"))
    )
    assert result.quarantine.empty
    sizes = result.triplets.groupby(["split", "category"]).size().to_dict()
    assert sizes[("val", "dress")] == 21 and sizes[("train", "toptee")] == 8
    assert result.triplets["edits_color"].any() and not result.triplets["edits_color"].all()
    assert (tmp_path / "images").joinpath(result.images["image_id"].iloc[0] + ".jpg").exists()


def test_bad_scale_and_benchmark_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        PlaceholderConfig(scale=2.0)
    with pytest.raises(ValueError, match="benchmark"):
        write_benchmark("coco", tmp_path, CFG)
