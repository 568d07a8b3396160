"""Tests of the image checks (exist, decode, size, hash) and the image index."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources import image_check
from dqe_cir_pipeline.data_sources.image_check import ImageIndex, check_images
from dqe_cir_pipeline.data_sources.schema import IMAGE_SCHEMA, QUARANTINE_SCHEMA


def _image(path: Path, size: tuple[int, int] = (8, 6), fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path, format=fmt)
    return path


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
    real = image_check._read_file

    def counting(path: str) -> tuple[bytes, str] | image_check._ImageCheck:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(image_check, "_read_file", counting)
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
