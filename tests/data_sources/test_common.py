"""Tests for the shared ingestion helpers: JSON loading, image checks, thresholds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources import common
from dqe_cir_pipeline.data_sources.common import (
    AnnotationError,
    ImageIndex,
    IngestionError,
    IngestResult,
    PhaseTimer,
    assemble_result,
    check_images,
    concat_frames,
    empty_frame,
    enforce_rejection_threshold,
    frame_from_rows,
    load_json,
    quarantine_row,
    to_arrow,
)
from dqe_cir_pipeline.data_sources.schema import (
    IMAGE_SCHEMA,
    QUARANTINE_SCHEMA,
    TRIPLET_SCHEMA,
)


def _image(path: Path, size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path, format=fmt)
    return path


# ----------------------------------------------------------------------------- JSON


def test_load_json_reads_valid_file(tmp_path: Path) -> None:
    p = tmp_path / "a.json"
    p.write_text('[{"x": 1}]')
    assert load_json(p) == [{"x": 1}]


def test_load_json_bad_json_names_file_and_position(tmp_path: Path) -> None:
    p = tmp_path / "cap.dress.val.json"
    p.write_text('[\n  {"candidate": "a",\n   "target": "b" "captions": []}\n]')
    with pytest.raises(AnnotationError) as exc:
        load_json(p)
    msg = str(exc.value)
    assert str(p) in msg
    assert "line 3, column 18" in msg
    assert isinstance(exc.value, ValueError)


def test_load_json_missing_file_gives_hint(tmp_path: Path) -> None:
    p = tmp_path / "nope.json"
    with pytest.raises(AnnotationError, match="not found: .*nope.json.*expected layout X"):
        load_json(p, hint="expected layout X")


def test_load_json_non_utf8(tmp_path: Path) -> None:
    p = tmp_path / "latin.json"
    p.write_bytes(b'["caf\xe9"]')
    with pytest.raises(AnnotationError, match="not UTF-8"):
        load_json(p)


# ----------------------------------------------------------------------------- frames


@pytest.mark.parametrize("schema", [IMAGE_SCHEMA, TRIPLET_SCHEMA, QUARANTINE_SCHEMA])
def test_empty_frames_match_schema(schema: pa.Schema) -> None:
    df = empty_frame(schema)
    assert list(df.columns) == schema.names
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    assert table.schema.equals(schema)
    assert to_arrow(df, schema).num_rows == 0


def test_to_arrow_rejects_nulls_and_wrong_columns() -> None:
    row = quarantine_row(
        "cirr", "image", "f.json", "x", "missing file: f", split="val", category="all"
    )
    df = frame_from_rows([row], QUARANTINE_SCHEMA)
    assert to_arrow(df, QUARANTINE_SCHEMA).num_rows == 1
    bad = df.copy()
    bad.loc[0, "reason"] = None
    with pytest.raises(ValueError, match="nullable"):
        to_arrow(bad, QUARANTINE_SCHEMA)
    with pytest.raises(ValueError, match="columns"):
        to_arrow(df[["dataset", "kind"]], QUARANTINE_SCHEMA)


def test_concat_frames_keeps_dtypes(tmp_path: Path) -> None:
    a, _ = check_images([("a", "all", "val", str(_image(tmp_path / "a.png")))], "cirr")
    images = concat_frames([a, empty_frame(IMAGE_SCHEMA), a], IMAGE_SCHEMA)
    assert len(images) == 2
    assert images["width"].dtype == "int32"
    assert IngestResult(images=images).to_arrow()["images"].schema.equals(IMAGE_SCHEMA)
    assert concat_frames([], IMAGE_SCHEMA).columns.tolist() == IMAGE_SCHEMA.names


def test_assemble_result_orders_quarantine_and_times_phases(tmp_path: Path) -> None:
    images, image_q = check_images(
        [
            ("a", "all", "val", str(_image(tmp_path / "a.png"))),
            ("b", "all", "val", str(tmp_path / "missing.png")),
        ],
        "cirr",
    )
    triplet_q = [
        quarantine_row(
            "cirr", "triplet", "cap.json", "7", "duplicate: pairid 7", split="val", category="all"
        )
    ]
    result = assemble_result(images, image_q, [], triplet_q, PhaseTimer(), "cirr")
    assert result.counts() == {
        "images": 1,
        "triplets": 0,
        "quarantined_images": 1,
        "quarantined_triplets": 1,
    }
    assert result.quarantine["kind"].tolist() == ["image", "triplet"]
    assert result.triplets.columns.tolist() == TRIPLET_SCHEMA.names
    assert {"frames_s", "total_s", "records_s"} <= set(result.timings)
    assert result.to_arrow()["quarantine"].schema.equals(QUARANTINE_SCHEMA)


# ----------------------------------------------------------------------------- images


def test_check_images_measures_and_hashes(tmp_path: Path) -> None:
    png = _image(tmp_path / "a.png", (8, 6), "PNG")
    jpg = _image(tmp_path / "b.jpg", (5, 7), "JPEG")
    images, quarantine = check_images(
        [("a", "dress", "val", str(png)), ("b", "dress", "val", str(jpg))], "fashioniq"
    )
    assert quarantine.empty
    assert images["image_id"].tolist() == ["a", "b"]
    assert images["width"].tolist() == [8, 5]
    assert images["height"].tolist() == [6, 7]
    assert images.loc[0, "content_hash"] == hashlib.sha256(png.read_bytes()).hexdigest()
    assert images["dataset"].unique().tolist() == ["fashioniq"]
    table = pa.Table.from_pandas(images, schema=IMAGE_SCHEMA, preserve_index=False)
    assert table.column("width").type == pa.int32()


def test_check_images_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "gone.jpg"
    images, quarantine = check_images([("gone", "all", "val", str(missing))], "cirr")
    assert images.empty
    row = quarantine.iloc[0]
    assert row["kind"] == "image"
    assert row["record"] == "gone"
    assert row["reason"].startswith("missing file: ")
    assert str(missing) in row["reason"]
    pa.Table.from_pandas(quarantine, schema=QUARANTINE_SCHEMA, preserve_index=False)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"this is not an image at all", "cannot identify"),
        (b"", "empty"),
    ],
)
def test_check_images_undecodable(tmp_path: Path, content: bytes, why: str) -> None:
    p = tmp_path / "bad.png"
    p.write_bytes(content)
    images, quarantine = check_images([("bad", "all", "val", str(p))], "cirr")
    assert images.empty
    reason = quarantine.iloc[0]["reason"]
    assert reason.startswith("undecodable image: ")
    assert str(p) in reason and why in reason


def test_check_images_truncated_png(tmp_path: Path) -> None:
    p = _image(tmp_path / "t.png", (32, 32))
    p.write_bytes(p.read_bytes()[:-30])  # cut into the IDAT / IEND chunks
    _, quarantine = check_images([("t", "all", "val", str(p))], "cirr")
    assert quarantine.iloc[0]["reason"].startswith("undecodable image: ")


def test_check_images_hashes_each_path_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = str(_image(tmp_path / "shared.png"))
    calls: list[str] = []
    real = common._read_file

    def counting(path: str) -> tuple[bytes, str] | common._ImageCheck:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(common, "_read_file", counting)
    images, _ = check_images(
        [("s", "shirt", "train", p), ("s", "shirt", "val", p), ("s", "dress", "val", p)],
        "fashioniq",
    )
    assert calls == [p]
    assert images["split"].tolist() == ["train", "val", "val"]
    assert images["content_hash"].nunique() == 1


@pytest.mark.parametrize("mode", ["decode", "header"])
def test_check_images_threaded_matches_serial(tmp_path: Path, mode: str) -> None:
    records = []
    for i in range(80):  # above the serial cut-off so the pool is used
        p = tmp_path / f"{i}.png"
        if i % 9:
            Image.new("RGB", (4 + i % 5, 4), (i, 0, 0)).save(p)
        records.append((str(i), "all", "val", str(p)))
    serial = check_images(records, "cirr", workers=1, mode=mode)
    threaded = check_images(records, "cirr", workers=4, mode=mode)
    pd.testing.assert_frame_equal(serial[0], threaded[0])
    pd.testing.assert_frame_equal(serial[1], threaded[1])
    assert len(threaded[1]) == 9  # i = 0, 9, ..., 72


# ----------------------------------------------------------------------------- index


def test_image_index_explains_unknown_and_quarantined(tmp_path: Path) -> None:
    good = str(_image(tmp_path / "g.png"))
    images, q = check_images(
        [("g", "all", "val", good), ("m", "all", "val", str(tmp_path / "m.png"))], "cirr"
    )
    index = ImageIndex({("all", "val"): ["g", "m"]}, images, q)
    assert index.problem("g", "all", "val", "reference") is None
    unknown = index.problem("zz", "all", "val", "target")
    assert unknown is not None and unknown.startswith("unknown image: target 'zz'")
    bad = index.problem("m", "all", "val", "reference")
    assert bad is not None and bad.startswith("quarantined image: reference 'm'")
    assert "missing file" in bad
    # listed in val only: unknown from the test1 split's point of view
    assert index.problem("g", "all", "test1", "reference").startswith("unknown image")


# ----------------------------------------------------------------------------- threshold


def _result_with(n_good: int, bad_reasons: list[str]) -> IngestResult:
    good = [
        {
            "image_id": f"g{i}",
            "dataset": "cirr",
            "category": "all",
            "split": "val",
            "path": f"/x/g{i}.png",
            "width": 1,
            "height": 1,
            "content_hash": "0" * 64,
        }
        for i in range(n_good)
    ]
    bad = [
        quarantine_row("cirr", "image", f"/x/b{i}.png", f"b{i}", r, split="val", category="all")
        for i, r in enumerate(bad_reasons)
    ]
    return IngestResult(
        images=frame_from_rows(good, IMAGE_SCHEMA),
        quarantine=frame_from_rows(bad, QUARANTINE_SCHEMA),
    )


def test_threshold_passes_at_or_below_limit() -> None:
    enforce_rejection_threshold(_result_with(9, ["missing file: /x/b0.png"]), 0.1)
    enforce_rejection_threshold(_result_with(0, []), 0.0)


def test_threshold_exceeded_raises_with_counts_and_examples() -> None:
    reasons = ["missing file: /x/b0.png does not exist"] * 3 + ["undecodable image: /x/b3"]
    with pytest.raises(IngestionError) as exc:
        enforce_rejection_threshold(_result_with(6, reasons), 0.2)
    msg = str(exc.value)
    assert "4 of 10 images quarantined (40.0% > 20.0%)" in msg
    assert "'missing file': 3" in msg and "'undecodable image': 1" in msg
    assert "/x/b0.png [b0]" in msg
    assert "cirr" in msg


def test_threshold_counts_triplets_separately() -> None:
    res = _result_with(10, [])
    res.quarantine = frame_from_rows(
        [
            quarantine_row(
                "cirr",
                "triplet",
                "cap.json",
                "1",
                "duplicate: pairid 1",
                split="val",
                category="all",
            )
        ],
        QUARANTINE_SCHEMA,
    )
    # no accepted triplets: 1 of 1 triplets rejected
    with pytest.raises(IngestionError, match="1 of 1 triplets"):
        enforce_rejection_threshold(res, 0.5)


def _triplet_result(parts: dict[tuple[str, str], tuple[int, int]]) -> IngestResult:
    """Accepted and quarantined triplet counts per (split, category)."""
    good, bad = [], []
    for (split, category), (n_good, n_bad) in parts.items():
        good += [{"split": split, "category": category}] * n_good
        bad += [
            quarantine_row(
                "fashioniq",
                "triplet",
                f"cap.{category}.{split}.json",
                f"{category}-{split}-{i}",
                "quarantined image: reference 'x'",
                split=split,
                category=category,
            )
            for i in range(n_bad)
        ]
    return IngestResult(
        triplets=pd.DataFrame(good, columns=["split", "category"]),
        quarantine=frame_from_rows(bad, QUARANTINE_SCHEMA),
    )


def test_threshold_is_judged_per_split_not_over_all_splits() -> None:
    # 12 of 210 val queries lost: 0.1 % of everything, 5.7 % of val
    res = _triplet_result({("train", "all"): (10_000, 0), ("val", "all"): (198, 12)})
    problems = common.rejection_problems(res, 0.02)
    assert len(problems) == 1 and problems[0].startswith(
        "val: 12 of 210 triplets quarantined (5.7% > 2.0%)"
    )
    with pytest.raises(IngestionError, match=r"val: 12 of 210 triplets"):
        enforce_rejection_threshold(res, 0.02)
    enforce_rejection_threshold(res, 0.06)


def test_threshold_is_judged_per_fashioniq_category() -> None:
    res = _triplet_result({("val", "dress"): (90, 10), ("val", "shirt"): (1000, 0)})
    [problem] = common.rejection_problems(res, 0.05)
    assert problem.startswith("val/dress: 10 of 100 triplets quarantined (10.0% > 5.0%)")
    assert "cap.dress.val.json [dress-val-0]: quarantined image" in problem


def test_threshold_validates_fraction() -> None:
    with pytest.raises(ValueError, match="max_rejected_fraction"):
        enforce_rejection_threshold(IngestResult(), 1.5)


def test_load_json_refuses_a_duplicate_key(tmp_path: Path) -> None:
    path = tmp_path / "split.shirt.val.json"
    path.write_text('{"a": "./x.png", "b": "./y.png", "a": "./z.png"}')
    with pytest.raises(AnnotationError, match=r"duplicate key 'a' in .*split.shirt.val.json"):
        load_json(path)
