"""Tests for atomic writes and short content hashes."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dqe_cir_pipeline.hooks.guards import RunLockHooks
from dqe_cir_pipeline.io_utils import (
    FolderInUseError,
    FolderLock,
    atomic_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    canonical_json,
    short_hash,
    stable_hash,
    temp_path_for,
)


def test_atomic_writes_create_parents_and_replace(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_json(tmp_path / "j.json", {"b": 1, "a": Path("x/y"), "n": np.float32(0.5)})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": "x/y", "b": 1, "n": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "j.json", "t.txt"]


def test_failing_writer_keeps_old_file_and_cleans_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")

    def writer(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full (simulated)")

    with pytest.raises(OSError, match="disk full"):
        atomic_save(target, writer)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_writer_that_writes_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_save(tmp_path / "f.txt", lambda tmp: None)
    assert not (tmp_path / "f.txt").exists()


def test_temp_path_keeps_suffix_for_numpy(tmp_path: Path) -> None:
    tmp = temp_path_for(tmp_path / "shard.npy")
    assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".")
    array = np.arange(6, dtype=np.float16).reshape(2, 3)
    atomic_save(tmp_path / "shard.npy", lambda p: np.save(p, array))  # np.save keeps the name
    np.testing.assert_array_equal(np.load(tmp_path / "shard.npy"), array)
    assert [p.name for p in tmp_path.iterdir()] == ["shard.npy"]


def test_short_hash_is_a_truncated_sha256_of_text_or_bytes() -> None:
    assert short_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()[:16]
    expected = hashlib.sha256("é".encode()).hexdigest()[:16]
    assert short_hash("é") == short_hash("é".encode()) == expected


def test_stable_hash_is_order_independent_and_sensitive() -> None:
    a = {"backbone": "vitg", "pre": {"size": 224, "pad": 1.25}}
    b = {"pre": {"pad": 1.25, "size": 224}, "backbone": "vitg"}
    assert stable_hash(a) == stable_hash(b)
    assert len(stable_hash(a)) == 16 and int(stable_hash(a), 16) >= 0
    assert stable_hash(a) != stable_hash({**a, "pre": {"size": 364, "pad": 1.25}})
    assert canonical_json((1, 2)) == canonical_json([1, 2]) == "[1,2]"
    assert stable_hash({"s": {2, 1}}) == stable_hash({"s": [1, 2]})
    # Pinned value: a cache key must not change between runs or machines.
    assert stable_hash({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()[:16]
    with pytest.raises(ValueError):
        stable_hash({"x": float("nan")})
    with pytest.raises(TypeError):
        stable_hash({"x": object()})


def test_atomic_torch_save_goes_through_atomic_save(tmp_path: Path) -> None:
    import torch

    from dqe_cir_pipeline.model.state import atomic_torch_save, load_torch

    class Unpicklable:
        def __reduce__(self) -> tuple:
            raise RuntimeError("boom")

    path = tmp_path / "run" / "last.pt"
    atomic_torch_save(path, {"x": torch.arange(3)})
    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save(path, {"x": Unpicklable()})
    torch.testing.assert_close(load_torch(path)["x"], torch.arange(3))  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left


def test_a_failed_write_names_the_file(tmp_path: Path) -> None:
    import errno

    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("532480 requested and 260032 written")  # numpy's words, no path

    target = tmp_path / "vit_cache" / "shard_00003.npy"
    with pytest.raises(OSError, match=r"writing .*shard_00003.npy failed: 532480 requested"):
        atomic_save(target, disk_full)
    assert not target.exists() and list(target.parent.iterdir()) == []  # nothing half-written

    def no_space(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_save(target, no_space)
    assert caught.value.errno == errno.ENOSPC and "shard_00003.npy" in str(caught.value)


def test_folder_lock_names_its_holder_and_dies_with_it(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from dqe_cir_pipeline.io_utils import FolderLock; "
            f"FolderLock({str(tmp_path)!r}).acquire({{'pid': 4242, 'command': 'kedro run a'}}); "
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError, match=r"in use by PID 4242 \(kedro run a"):
            FolderLock(tmp_path).acquire({"pid": 1})
    finally:
        holder.kill()  # like kill -9: no clean-up code runs
        holder.wait()
    time.sleep(0.1)
    lock = FolderLock(tmp_path)
    lock.acquire({"pid": 2})  # the dead holder's lock went with its process
    lock.release()


def test_run_lock_hooks_allow_one_run_per_data_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DQE_DATA_ROOT", str(tmp_path))
    first, second = RunLockHooks(), RunLockHooks()
    first.before_pipeline_run({"pipeline_names": ["train"]})
    with pytest.raises(FolderInUseError, match=str(tmp_path)):
        second.before_pipeline_run({"pipeline_names": ["training"]})
    first.on_pipeline_error()  # a failed run lets go too
    second.before_pipeline_run({"pipeline_names": ["training"]})
    second.after_pipeline_run()
