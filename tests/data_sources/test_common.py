"""Tests for the shared ingestion helpers: JSON loading, frames, thresholds."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources import common
from dqe_cir_pipeline.data_sources.common import (
    AnnotationError,
    IngestionError,
    IngestResult,
    PhaseTimer,
    assemble_result,
    concat_frames,
    empty_frame,
    enforce_rejection_threshold,
    frame_from_rows,
    load_json,
    quarantine_row,
    to_arrow,
)
from dqe_cir_pipeline.data_sources.image_check import check_images
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
        "captions_placeholder": 0,
        "captions_blank": 0,
    }
    assert result.quarantine["kind"].tolist() == ["image", "triplet"]
    assert result.triplets.columns.tolist() == TRIPLET_SCHEMA.names
    assert {"frames_s", "total_s", "records_s"} <= set(result.timings)
    assert result.to_arrow()["quarantine"].schema.equals(QUARANTINE_SCHEMA)


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


def test_fingerprint_sees_extra_valid_targets_only() -> None:
    """Another valid target changes the fingerprint; a list holding just the annotated
    target hashes like a table without the column (earlier runs keep resuming)."""
    images = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "split": ["val"] * 3, "content_hash": ["1", "2", "3"]}
    )
    triplets = pd.DataFrame(
        {
            "query_id": ["q0", "q1"],
            "split": ["val", "val"],
            "reference_id": ["a", "b"],
            "target_id": ["b", None],
            "caption_eval": ["make it red", "make it blue"],
            "edit_type": ["color", "color"],
            "captions_train": [["make it red"], ["make it blue"]],
        }
    )
    plain = common.dataset_fingerprint(images, triplets)
    single = triplets.assign(valid_targets=[["b"], []])
    assert common.dataset_fingerprint(images, single) == plain
    several = triplets.assign(valid_targets=[["b", "c"], []])
    other = triplets.assign(valid_targets=[["a", "b"], []])
    assert common.dataset_fingerprint(images, several) != plain
    assert common.dataset_fingerprint(images, several) != common.dataset_fingerprint(images, other)
