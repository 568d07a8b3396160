"""The image check record: a re-run reads only new or changed files, and its outcome is
the one a full check gives."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources import image_check
from dqe_cir_pipeline.data_sources.image_check import (
    CheckRecord,
    CheckRecordFile,
    check_images,
    recording_checks,
)


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record files however recently written (the settle window has its own test)."""
    monkeypatch.setattr(image_check, "SETTLE_NS", 0)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths whose bytes are read, in order."""
    calls: list[str] = []
    real = image_check._read_file

    def counting(path: str) -> tuple[bytes, str] | image_check._ImageCheck:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(image_check, "_read_file", counting)
    return calls


def _folder(tmp_path: Path, n: int = 6) -> list[tuple[str, str, str, str]]:
    """``n`` images (every third one not an image) as check records; BMP, so that an
    image of the same dimensions has the same file size."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        p = tmp_path / f"{i}.bmp"
        if i % 3 == 2:
            p.write_bytes(b"not an image")
        else:
            Image.new("RGB", (4 + i, 5), (i * 20, 0, 0)).save(p)
        records.append((f"img{i}", "all", "val", str(p)))
    records.append(("gone", "all", "val", str(tmp_path / "gone.bmp")))
    return records


def _run(
    store: CheckRecordFile, records: list[tuple[str, str, str, str]], mode: str = "decode"
) -> tuple[pd.DataFrame, pd.DataFrame, CheckRecord]:
    record = store.read(mode)
    with recording_checks(record):
        images, quarantine = check_images(records, "cirr", workers=1, mode=mode)
    store.write(record)
    return images, quarantine, record


def test_no_change_rerun_reads_only_the_bad_files(tmp_path: Path, reads: list[str]) -> None:
    records = _folder(tmp_path / "img")
    store = CheckRecordFile(tmp_path / "record.parquet")
    full = check_images(records, "cirr", workers=1)
    first = _run(store, records)
    assert first[2].stats() == {"mode": "decode", "reused": 0, "checked": 7, "recorded": 4}
    reads.clear()
    written = store.path.stat().st_mtime_ns
    images, quarantine, record = _run(store, records)
    assert store.path.stat().st_mtime_ns == written  # nothing new to record: not rewritten
    # the good files come from the record; the bad ones are checked again
    assert record.stats() == {"mode": "decode", "reused": 4, "checked": 3, "recorded": 4}
    assert sorted(reads) == sorted(r[3] for r in records if r[0] in {"img2", "img5", "gone"})
    pd.testing.assert_frame_equal(images, full[0])
    pd.testing.assert_frame_equal(quarantine, full[1])


@pytest.mark.parametrize("same_size", [True, False])
def test_a_changed_file_alone_is_checked_again(
    tmp_path: Path, reads: list[str], same_size: bool
) -> None:
    records = [r for r in _folder(tmp_path / "img") if r[0] in {"img0", "img1", "img3"}]
    store = CheckRecordFile(tmp_path / "record.parquet")
    _run(store, records)
    path = Path(records[1][3])
    before = path.stat()
    Image.new("RGB", (5, 5) if same_size else (9, 9), (1, 2, 3)).save(path)
    if same_size:  # the same size and modification time: only ctime tells
        assert path.stat().st_size == before.st_size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    reads.clear()
    images, _, record = _run(store, records)
    assert reads == [str(path)]
    assert record.stats()["reused"] == 2
    full, _ = check_images(records, "cirr", workers=1)
    pd.testing.assert_frame_equal(images, full)


def test_a_fixed_file_is_accepted(tmp_path: Path) -> None:
    records = _folder(tmp_path / "img", 3)[:3]
    store = CheckRecordFile(tmp_path / "record.parquet")
    assert len(_run(store, records)[1]) == 1
    Image.new("RGB", (3, 3)).save(records[2][3], format="BMP")
    images, quarantine, _ = _run(store, records)
    assert quarantine.empty and len(images) == 3


def test_a_changed_mode_checks_every_file(tmp_path: Path, reads: list[str]) -> None:
    records = _folder(tmp_path / "img")
    store = CheckRecordFile(tmp_path / "record.parquet")
    _run(store, records, "decode")
    reads.clear()
    _, _, record = _run(store, records, "header")
    assert record.stats()["reused"] == 0 and len(reads) == len(records)
    reads.clear()
    _, _, record = _run(store, records, "header")
    assert record.stats()["reused"] == 4


def test_exists_checks_ignore_the_record(tmp_path: Path, reads: list[str]) -> None:
    records = _folder(tmp_path / "img")
    record = CheckRecord("decode")
    with recording_checks(record):
        check_images(records, "cirr", workers=1, mode="exists")
    assert record.stats()["checked"] == 0 and not reads and not record.entries


def test_a_recently_changed_file_is_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_check, "SETTLE_NS", 3_600 * 10**9)
    records = _folder(tmp_path / "img", 2)[:2]
    _, _, record = _run(CheckRecordFile(tmp_path / "record.parquet"), records)
    assert record.entries == {}  # both written just now: within the window


def test_threaded_checks_use_the_record(tmp_path: Path, reads: list[str]) -> None:
    records = [
        (str(i), "all", "val", str(tmp_path / f"{i}.png"))
        for i in range(80)  # above the serial cut-off
    ]
    for _, _, _, p in records:
        Image.new("RGB", (4, 4)).save(p)
    store = CheckRecordFile(tmp_path / "record.parquet")
    for mode in ("decode", "header"):
        record = store.read(mode)
        with recording_checks(record):
            first = check_images(records, "cirr", workers=4, mode=mode)
        store.write(record)
        reads.clear()
        record = store.read(mode)
        with recording_checks(record):
            again = check_images(records, "cirr", workers=4, mode=mode)
        assert not reads and record.stats()["reused"] == 80
        pd.testing.assert_frame_equal(first[0], again[0])


def test_an_unreadable_record_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "record.parquet"
    path.write_bytes(b"torn")
    record = CheckRecordFile(path).read("decode")
    assert record.stats()["reused"] == 0 and not path.exists()
    (aside,) = tmp_path.iterdir()
    assert aside.name.startswith("record.parquet.corrupt-")


def test_the_record_round_trips(tmp_path: Path) -> None:
    records = _folder(tmp_path / "img")
    store = CheckRecordFile(tmp_path / "record.parquet")
    _, _, record = _run(store, records)
    assert store.read("decode")._previous == record.entries
    _run(CheckRecordFile(tmp_path / "empty.parquet"), [])
    assert CheckRecordFile(tmp_path / "empty.parquet").read("decode")._previous == {}
