"""Tests for the CIRR reader (real excerpts) and the CIRR layout of the generated benchmark."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import (
    AnnotationError,
    IngestionError,
    IngestResult,
    enforce_rejection_threshold,
)
from dqe_cir_pipeline.data_sources.schema import (
    IMAGE_SCHEMA,
    QUARANTINE_SCHEMA,
    TRIPLET_SCHEMA,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations" / "cirr"
REAL = CIRRConfig(image_only_splits=("train",))


def _make_images(ann: Path, root: Path) -> None:
    for f in (ann / "image_splits").glob("split.*.json"):
        for n, rel in enumerate(json.loads(f.read_text()).values()):
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (9, 5), (n, 3, 7)).save(p, format="PNG")


@pytest.fixture
def ann(tmp_path: Path) -> Path:
    """A writable copy of the CIRR excerpts."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "ann"))


@pytest.fixture
def images(ann: Path, tmp_path: Path) -> Path:
    root = tmp_path / "img"
    _make_images(ann, root)
    return root


def _edit(path: Path, fn: Callable[[Any], Any]) -> None:
    """Rewrite a JSON file through ``fn``."""
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def _reasons(res: IngestResult, kind: str = "triplet") -> list[str]:
    q = res.quarantine
    return q.loc[q["kind"] == kind, "reason"].tolist()


VAL_ONLY = CIRRConfig(splits=("val",))


# --------------------------------------------------------------------- real excerpts


def test_reads_real_excerpts(ann: Path, images: Path) -> None:
    res = read_cirr(ann, images, REAL)
    assert res.quarantine.empty
    t = res.triplets
    assert t["split"].value_counts().to_dict() == {"val": 4, "test1": 3}
    first = t.iloc[0]
    assert first["query_id"] == "12060"
    assert first["reference_id"] == "dev-244-0-img0"
    assert first["target_id"] == "dev-1028-1-img1"
    assert first["caption_eval"] == "show three bottles of soft drink"
    assert first["captions_raw"] == ["show three bottles of soft drink"]
    assert first["captions_train"] == ["show three bottles of soft drink"]
    assert len(first["subset_members"]) == 6 and "dev-244-0-img0" in first["subset_members"]
    assert first["category"] == "all" and first["dataset"] == "cirr"
    assert first["edit_labels"] == "{}"
    assert t.loc[t["split"] == "test1", "target_id"].isna().all()
    # train is indexed (images checked) even without captions
    img = res.images
    assert img["split"].value_counts().to_dict() == {"val": 12, "test1": 6, "train": 4}
    row = img[img["image_id"] == "dev-244-0-img0"].iloc[0]
    assert row["path"] == str(images / "dev" / "dev-244-0-img0.png")
    assert (row["width"], row["height"]) == (9, 5)


def test_outputs_follow_schemas(ann: Path, images: Path) -> None:
    res = read_cirr(ann, images, REAL)
    for df, schema in (
        (res.images, IMAGE_SCHEMA),
        (res.triplets, TRIPLET_SCHEMA),
        (res.quarantine, QUARANTINE_SCHEMA),
    ):
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
        assert table.schema.equals(schema) and table.num_rows == len(df)
    assert set(res.to_arrow()) == {"images", "triplets", "quarantine"}


def test_missing_captions_for_non_image_only_split(ann: Path, images: Path) -> None:
    with pytest.raises(AnnotationError, match=r"cap\.rc2\.train\.json.*image_only_splits"):
        read_cirr(ann, images, CIRRConfig())


def test_missing_split_file(ann: Path, images: Path) -> None:
    with pytest.raises(AnnotationError, match=r"split\.rc2\.test2\.json"):
        read_cirr(ann, images, CIRRConfig(splits=("test2",)))


def test_bad_json_names_file_and_position(ann: Path, images: Path) -> None:
    path = ann / "captions" / "cap.rc2.val.json"
    path.write_text(path.read_text().replace("12062,", "12062", 1))
    with pytest.raises(AnnotationError) as exc:
        read_cirr(ann, images, VAL_ONLY)
    assert "cap.rc2.val.json at line" in str(exc.value) and "column" in str(exc.value)


# --------------------------------------------------------------------- quarantine


def test_duplicate_pairid(ann: Path, images: Path) -> None:
    _edit(ann / "captions" / "cap.rc2.val.json", lambda r: r + [dict(r[1], caption="x")])
    res = read_cirr(ann, images, VAL_ONLY)
    assert _reasons(res) == ["duplicate: pairid 12062 already used by record 1 (record 4)"]
    assert len(res.triplets) == 4


def test_missing_fields(ann: Path, images: Path) -> None:
    def damage(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        del recs[0]["caption"]
        del recs[1]["target_hard"]
        del recs[2]["img_set"]["members"]
        return recs

    _edit(ann / "captions" / "cap.rc2.val.json", damage)
    res = read_cirr(ann, images, VAL_ONLY)
    q = res.quarantine.set_index("record")["reason"]
    assert q["12060"] == "missing field: no 'caption' (record 0)"
    assert q["12062"] == "missing field: no 'target_hard' (record 1)"
    assert q.iloc[2].startswith("missing field: no 'img_set.members'")
    assert len(res.triplets) == 1


def test_member_absent_from_split(ann: Path, images: Path) -> None:
    def stray(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        recs[0]["img_set"]["members"][0] = "test1-147-1-img1"  # a test1 image in val
        return recs

    _edit(ann / "captions" / "cap.rc2.val.json", stray)
    res = read_cirr(ann, images, VAL_ONLY)
    assert _reasons(res) == [
        "unknown image: img_set member 'test1-147-1-img1' is not in the all/val image split"
    ]


def test_missing_and_undecodable_images(ann: Path, images: Path) -> None:
    (images / "dev" / "dev-244-0-img0.png").unlink()  # reference of 12060
    (images / "dev" / "dev-430-3-img0.png").write_bytes(b"garbage")  # target of 12062
    res = read_cirr(ann, images, VAL_ONLY)
    img_q = _reasons(res, "image")
    assert len(img_q) == 2
    assert any(r.startswith("missing file: ") and "dev-244-0-img0.png" in r for r in img_q)
    assert any(r.startswith("undecodable image: ") and "dev-430-3-img0.png" in r for r in img_q)
    q = res.quarantine.set_index("record")["reason"]
    assert q["12060"].startswith("quarantined image: reference 'dev-244-0-img0'")
    assert q["12062"].startswith("quarantined image: target 'dev-430-3-img0'")
    # the other two val queries use a different img_set and survive
    assert res.triplets["query_id"].tolist() == ["12081", "12082"]


def test_path_outside_image_root(ann: Path, images: Path) -> None:
    _edit(
        ann / "image_splits" / "split.rc2.val.json",
        lambda m: dict(m, **{"dev-244-0-img0": "../../etc/passwd"}),
    )
    res = read_cirr(ann, images, VAL_ONLY)
    [reason] = _reasons(res, "image")
    assert reason.startswith("bad image path: '../../etc/passwd' points outside")


def test_blank_caption_kept_or_quarantined(ann: Path, images: Path) -> None:
    def blank(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        recs[0]["caption"] = " "  # like real test1 pairid 27098
        return recs

    _edit(ann / "captions" / "cap.rc2.val.json", blank)
    kept = read_cirr(ann, images, VAL_ONLY)
    assert kept.triplets.iloc[0]["caption_eval"] == ""
    assert kept.quarantine.empty
    dropped = read_cirr(ann, images, CIRRConfig(splits=("val",), quarantine_empty_captions=True))
    assert _reasons(dropped) == ["empty captions: caption is ' ' (record 0)"]


def test_wrong_image_root_fails_threshold(ann: Path, tmp_path: Path) -> None:
    res = read_cirr(ann, tmp_path / "elsewhere", REAL)
    assert res.images.empty
    with pytest.raises(IngestionError, match="val: 12 of 12 images quarantined"):
        enforce_rejection_threshold(res, 0.01)


# --------------------------------------------------------------------- generated layout


def _synthetic(root: Path, edit: dict[str, Any] | None) -> None:
    names = [f"s{i}" for i in range(4)]
    for split in ("train", "val"):
        (root / "image_splits").mkdir(parents=True, exist_ok=True)
        (root / "captions").mkdir(parents=True, exist_ok=True)
        mapping = {f"{split}-{n}": f"./images/{split}-{n}.png" for n in names}
        (root / "image_splits" / f"split.{split}.json").write_text(json.dumps(mapping))
        ids = list(mapping)
        rec: dict[str, Any] = {
            "pairid": 0,
            "reference": ids[0],
            "target_hard": ids[1],
            "caption": "make the circle red",
            "img_set": {"id": 0, "members": ids},
        }
        if edit is not None:
            rec["edit"] = edit
        (root / "captions" / f"cap.{split}.json").write_text(json.dumps([rec]))
    _make_images(root, root)


def test_generated_layout_uses_exact_edit_labels(tmp_path: Path) -> None:
    edit = {"type": "color", "edits_shape": False, "edits_color": True, "to": "red"}
    _synthetic(tmp_path, edit)
    cfg = CIRRConfig(splits=("train", "val"), dataset_name="synthetic", version=None)
    res = read_cirr(tmp_path, tmp_path, cfg)
    assert res.quarantine.empty
    t = res.triplets
    assert t["split"].tolist() == ["train", "val"]
    assert t["query_id"].tolist() == ["0", "0"]  # pairid uniqueness is per split
    # the lexicon would say "both" (circle + red); the recorded labels win
    assert t["edit_type"].tolist() == ["color", "color"]
    assert json.loads(t.iloc[0]["edit_labels"]) == edit
    assert t.iloc[0]["edit_labels"] == json.dumps(edit, sort_keys=True)
    assert set(res.images["dataset"]) == {"synthetic"}


def test_generated_layout_without_edit_uses_lexicon(tmp_path: Path) -> None:
    _synthetic(tmp_path, None)
    cfg = CIRRConfig(splits=("val",), dataset_name="synthetic", version=None)
    t = read_cirr(tmp_path, tmp_path, cfg).triplets
    assert t.iloc[0]["edit_type"] == "both" and t.iloc[0]["edit_labels"] == "{}"


def test_bad_edit_flags_are_quarantined(tmp_path: Path) -> None:
    _synthetic(tmp_path, {"type": "color", "edits_color": "yes"})
    cfg = CIRRConfig(splits=("val",), dataset_name="synthetic", version=None)
    res = read_cirr(tmp_path, tmp_path, cfg)
    assert _reasons(res) == ["bad value: 'edit.edits_color' is 'yes', not a boolean (record 0)"]


def test_symlink_escaping_the_image_root_is_refused(
    ann: Path, images: Path, tmp_path: Path
) -> None:
    rel = json.loads((ann / "image_splits" / "split.rc2.val.json").read_text())["dev-244-0-img0"]
    link = Path(os.path.normpath(images / rel))
    outside = tmp_path / "elsewhere.png"
    link.rename(outside)
    link.symlink_to(outside)  # a file inside the root that leads out of it
    res = read_cirr(ann, images, VAL_ONLY)
    [reason] = _reasons(res, "image")
    assert reason.startswith("bad image path:") and "points outside" in reason
    # the image root itself may be a link: only links that lead out of it are refused
    alias = tmp_path / "alias"
    alias.symlink_to(images)
    link.unlink()
    outside.rename(link)
    assert not _reasons(read_cirr(ann, alias, VAL_ONLY), "image")
