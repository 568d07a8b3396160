"""Tests for the FashionIQ reader on excerpts of the real annotation files."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources.common import (
    AnnotationError,
    IngestionError,
    IngestResult,
    enforce_rejection_threshold,
)
from dqe_cir_pipeline.data_sources.fashioniq import (
    FashionIQConfig,
    clean_caption,
    eval_caption,
    read_fashioniq,
    train_captions,
)
from dqe_cir_pipeline.data_sources.schema import (
    IMAGE_SCHEMA,
    QUARANTINE_SCHEMA,
    TRIPLET_SCHEMA,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "fashioniq"
DRESS = FashionIQConfig(categories=("dress",))


@pytest.fixture
def ann(tmp_path: Path) -> Path:
    """A writable copy of the FashionIQ excerpts."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "ann"))


@pytest.fixture
def images(ann: Path, tmp_path: Path) -> Path:
    """A tiny image for every id in the split excerpts; ids ending in a digit are PNG."""
    root = tmp_path / "images"
    root.mkdir()
    ids: set[str] = set()
    for f in (ann / "image_splits").glob("split.*.json"):
        ids.update(json.loads(f.read_text()))
    for n, image_id in enumerate(sorted(ids)):
        fmt, ext = ("PNG", "png") if image_id[-1].isdigit() else ("JPEG", "jpg")
        Image.new("RGB", (6 + n % 3, 4), (n, 0, 0)).save(root / f"{image_id}.{ext}", format=fmt)
    return root


def _edit(path: Path, fn: Callable[[Any], Any]) -> None:
    """Rewrite a JSON file through ``fn``."""
    data = json.loads(path.read_text())
    path.write_text(json.dumps(fn(data)))


def _reasons(res: IngestResult, kind: str = "triplet") -> list[str]:
    q = res.quarantine
    return q.loc[q["kind"] == kind, "reason"].tolist()


# --------------------------------------------------------------------- caption protocol


@pytest.mark.parametrize(
    ("c1", "c2", "expected"),
    [
        # real val record 0
        (
            "is shiny and silver with shorter sleeves",
            "fit and flare",
            "Is shiny and silver with shorter sleeves and fit and flare",
        ),
        # trailing ".?, " stripped from both; str.capitalize lower-cases the rest of c1;
        # c2 keeps its case
        ("Is Darker.", "has a V-neck?", "Is darker and has a V-neck"),
        ("  is red, ", "Longer. ", "Is red and Longer"),
        # leading spaces / dots go too (the published code uses str.strip, not rstrip)
        (
            " yello and more flowing",
            "short and black",
            "Yello and more flowing and short and black",
        ),
        # one empty caption: the other alone
        ("", "is grey with a design on the back", "Is grey with a design on the back"),
        ("Darker and not as shiny", ".", "Darker and not as shiny"),
        ("", " . ", ""),
    ],
)
def test_eval_caption_hand_worked(c1: str, c2: str, expected: str) -> None:
    assert eval_caption(c1, c2) == expected


def test_train_caption_forms() -> None:
    assert train_captions("is red.", "Has Sleeves") == [
        "Is red and Has Sleeves",
        "Has sleeves and is red",
        "Is red",
        "Has sleeves",
    ]
    assert train_captions("is red.", "Has Sleeves", random_forms=False) == [
        "Is red and Has Sleeves"
    ]
    assert train_captions("", "is pink") == ["Is pink"]
    assert train_captions("", "") == []
    assert clean_caption(" ?.is red,. ") == "is red"


# --------------------------------------------------------------------- real excerpts


def test_reads_dress_excerpts(ann: Path, images: Path) -> None:
    res = read_fashioniq(ann, images, DRESS)
    t = res.triplets
    assert (t["split"].value_counts().to_dict()) == {"train": 4, "val": 4, "test": 3}
    val0 = t[t["query_id"] == "dress-val-0"].iloc[0]
    assert val0["reference_id"] == "B005X4PL1G" and val0["target_id"] == "B0084Y8XIU"
    assert val0["caption_eval"] == "Is shiny and silver with shorter sleeves and fit and flare"
    assert val0["captions_raw"] == ["is shiny and silver with shorter sleeves", "fit and flare"]
    assert len(val0["captions_train"]) == 4
    assert (val0["edits_color"], val0["edits_shape"], val0["edit_type"]) == (True, True, "both")
    assert val0["category"] == "dress" and val0["dataset"] == "fashioniq"
    assert val0["subset_members"] == [] and val0["edit_labels"] == "{}"
    # the test split has no targets
    assert t.loc[t["split"] == "test", "target_id"].isna().all()
    # the real "." caption (train record 3): first caption alone, record kept
    dot = t[t["query_id"] == "dress-train-3"].iloc[0]
    assert dot["caption_eval"] == "Darker and not as shiny"
    assert dot["captions_train"] == ["Darker and not as shiny"]


def test_real_duplicate_in_test_is_quarantined(ann: Path, images: Path) -> None:
    res = read_fashioniq(ann, images, DRESS)
    q = res.quarantine
    assert q["record"].tolist() == ["dress-test-3"]
    assert q.iloc[0]["reason"].startswith("duplicate: ")
    assert "record 2" in q.iloc[0]["reason"]
    assert q.iloc[0]["source_file"].endswith("cap.dress.test.json")


def test_image_index_rows(ann: Path, images: Path) -> None:
    res = read_fashioniq(ann, images, DRESS)
    img = res.images
    for split in ("train", "val", "test"):
        listed = json.loads((ann / "image_splits" / f"split.dress.{split}.json").read_text())
        assert img.loc[img["split"] == split, "image_id"].tolist() == listed
    assert img["path"].map(lambda p: Path(p).is_absolute() and Path(p).exists()).all()
    # extension fallback: jpg tried first, png when only png exists
    png_rows = img[img["path"].str.endswith(".png")]
    assert len(png_rows) and png_rows["image_id"].str[-1].str.isdigit().all()
    assert img["category"].unique().tolist() == ["dress"]


def test_outputs_follow_schemas(ann: Path, images: Path) -> None:
    res = read_fashioniq(ann, images, DRESS)
    for df, schema in (
        (res.images, IMAGE_SCHEMA),
        (res.triplets, TRIPLET_SCHEMA),
        (res.quarantine, QUARANTINE_SCHEMA),
    ):
        assert list(df.columns) == schema.names
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        assert table.schema.equals(schema)
        assert table.num_rows == len(df)
    assert res.timings["total_s"] > 0


def test_real_empty_first_captions_kept(ann: Path, images: Path) -> None:
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("toptee",), splits=("val",)))
    t = res.triplets.set_index("query_id")
    assert len(t) == 3 and res.quarantine.empty
    assert t.loc["toptee-val-1", "caption_eval"] == "Is an off the shoulder top"
    assert t.loc["toptee-val-2", "captions_train"] == ["Fades from red to orange"]


def test_no_random_forms(ann: Path, images: Path) -> None:
    cfg = FashionIQConfig(categories=("dress",), splits=("val",), random_train_forms=False)
    t = read_fashioniq(ann, images, cfg).triplets
    assert (t["captions_train"].map(len) == 1).all()
    assert (t["captions_train"].str[0] == t["caption_eval"]).all()


# --------------------------------------------------------------------- bad inputs


def test_bad_json_names_file_and_position(ann: Path, images: Path) -> None:
    path = ann / "captions" / "cap.dress.val.json"
    path.write_text(path.read_text().replace('"target"', "target", 1))
    with pytest.raises(AnnotationError, match=r"cap\.dress\.val\.json at line 3, column 3"):
        read_fashioniq(ann, images, DRESS)


def test_missing_captions_file(ann: Path, images: Path) -> None:
    (ann / "captions" / "cap.dress.train.json").unlink()
    with pytest.raises(AnnotationError, match=r"not found: .*cap\.dress\.train\.json"):
        read_fashioniq(ann, images, DRESS)


def test_wrong_top_level_type(ann: Path, images: Path) -> None:
    (ann / "image_splits" / "split.dress.val.json").write_text('{"a": 1}')
    with pytest.raises(AnnotationError, match="expected a list of image ids"):
        read_fashioniq(ann, images, DRESS)


def test_missing_field_is_quarantined(ann: Path, images: Path) -> None:
    def drop_target(recs: list) -> list:
        del recs[1]["target"]
        del recs[2]["captions"]
        return recs

    _edit(ann / "captions" / "cap.dress.val.json", drop_target)
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    q = res.quarantine.set_index("record")
    assert q.loc["dress-val-1", "reason"] == "missing field: record 1 has no 'target'"
    assert q.loc["dress-val-2", "reason"] == "missing field: record 2 has no 'captions'"
    assert q.loc["dress-val-1", "source_file"].endswith("cap.dress.val.json")
    assert len(res.triplets) == 2


def test_duplicate_query_is_quarantined(ann: Path, images: Path) -> None:
    _edit(ann / "captions" / "cap.dress.val.json", lambda recs: recs + [recs[0]])
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    assert _reasons(res) == [
        "duplicate: same candidate, target and captions as record 0 (dress-val-0)"
    ]
    assert res.quarantine.iloc[0]["record"] == "dress-val-4"


def test_both_captions_empty_is_quarantined(ann: Path, images: Path) -> None:
    def blank(recs: list) -> list:
        recs[0]["captions"] = ["", " ."]
        return recs

    _edit(ann / "captions" / "cap.dress.val.json", blank)
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    [reason] = _reasons(res)
    assert reason.startswith("empty captions: ")
    assert "dress-val-0" not in res.triplets["query_id"].tolist()


def test_image_missing_on_disk(ann: Path, images: Path) -> None:
    (images / "B0084Y8XIU.jpg").unlink()  # target of val record 0
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    [img_reason] = _reasons(res, "image")
    assert img_reason.startswith("missing file: none of B0084Y8XIU.jpg, B0084Y8XIU.png")
    [trip_reason] = _reasons(res)
    assert trip_reason.startswith("quarantined image: target 'B0084Y8XIU' (missing file")
    assert "B0084Y8XIU" not in res.images["image_id"].tolist()


def test_undecodable_image(ann: Path, images: Path) -> None:
    (images / "B005X4PL1G.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    [img_reason] = _reasons(res, "image")
    assert img_reason.startswith("undecodable image: ") and "B005X4PL1G.jpg" in img_reason
    [trip_reason] = _reasons(res)
    assert "candidate 'B005X4PL1G'" in trip_reason


def test_id_absent_from_split(ann: Path, images: Path) -> None:
    def unknown(recs: list) -> list:
        recs[0]["target"] = "B00NOTLISTED"
        return recs

    _edit(ann / "captions" / "cap.dress.val.json", unknown)
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    assert _reasons(res) == [
        "unknown image: target 'B00NOTLISTED' is not in the dress/val image split"
    ]


def test_wrong_image_root_fails_threshold(ann: Path, tmp_path: Path) -> None:
    res = read_fashioniq(ann, tmp_path / "no_such_dir", DRESS)
    assert res.images.empty and res.triplets.empty
    with pytest.raises(IngestionError, match="'missing file'"):
        enforce_rejection_threshold(res, 0.05)


def test_symlink_escaping_the_image_root_is_quarantined(
    ann: Path, images: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere" / "secret.jpg"
    outside.parent.mkdir()
    (images / "B0084Y8XIU.jpg").rename(outside)
    (images / "B0084Y8XIU.jpg").symlink_to(outside)  # inside the root, leading out of it
    res = read_fashioniq(ann, images, FashionIQConfig(categories=("dress",), splits=("val",)))
    [img_reason] = _reasons(res, "image")
    assert (
        img_reason.startswith("bad image path: a symlink to ")
        and "outside the image root" in img_reason
    )
    assert "B0084Y8XIU" not in res.images["image_id"].tolist()
