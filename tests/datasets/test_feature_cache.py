"""Tests for the resumable memory-mapped ViT feature cache dataset."""

from __future__ import annotations

import copy
import json
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError

from dqe_cir_pipeline.datasets.feature_cache import (
    FeatureCache,
    FeatureCacheDataset,
    FeatureExtractionJob,
)

T, D = 5, 8
DESCRIPTION = {"backbone": "tiny", "image_size": 32, "pad_ratio": 1.25}


def _features_for(image_id: str, content_hash: str) -> np.ndarray:
    """Deterministic (T, D) features derived from the id and the content hash."""
    seed = zlib.crc32(f"{image_id}|{content_hash}".encode())
    return np.random.default_rng(seed).standard_normal((T, D)).astype(np.float32)


class CountingEncoder:
    """Encoder stub that records which image ids it was asked for."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail_on_call = fail_on_call

    @property
    def encoded_ids(self) -> list[str]:
        return [image_id for call in self.calls for image_id in call]

    def __call__(self, rows: pd.DataFrame) -> np.ndarray:
        if self.fail_on_call is not None and len(self.calls) + 1 == self.fail_on_call:
            raise RuntimeError("simulated crash during extraction")
        self.calls.append(rows["image_id"].tolist())
        return np.stack(
            [
                _features_for(i, h)
                for i, h in zip(rows["image_id"], rows["content_hash"], strict=True)
            ]
        )


def _images(n: int, changed: dict[str, str] | None = None) -> pd.DataFrame:
    ids = [f"img{i:03d}" for i in range(n)]
    hashes = [(changed or {}).get(i, f"h-{i}") for i in ids]
    return pd.DataFrame(
        {"image_id": ids, "path": [f"/x/{i}.jpg" for i in ids], "content_hash": hashes}
    )


def _job(
    images: pd.DataFrame,
    encoder: Callable[[pd.DataFrame], np.ndarray],
    *,
    cache_key: str = "tiny-abc123",
    description: dict | None = None,
    shard_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> FeatureExtractionJob:
    return FeatureExtractionJob(
        images=images,
        cache_key=cache_key,
        description=DESCRIPTION if description is None else description,
        encode=encoder,
        shard_size=shard_size,
        progress=progress,
    )


@pytest.fixture
def dataset(tmp_path: Path) -> FeatureCacheDataset:
    return FeatureCacheDataset(filepath=str(tmp_path / "cache"))


def test_round_trip_values_within_fp16(dataset: FeatureCacheDataset, tmp_path: Path) -> None:
    images = _images(10)
    progress: list[tuple[int, int]] = []
    dataset.save(_job(images, CountingEncoder(), progress=lambda d, t: progress.append((d, t))))

    cache = dataset.load()
    assert isinstance(cache, FeatureCache)
    assert len(cache) == 10 and cache.tokens == T and cache.dim == D
    assert set(cache.image_ids) == set(images["image_id"])
    assert "img003" in cache and "nope" not in cache
    assert cache.description == DESCRIPTION
    got = cache.get(images["image_id"].tolist())
    assert got.dtype == np.float16 and got.shape == (10, T, D)
    expected = np.stack([_features_for(i, f"h-{i}") for i in images["image_id"]])
    np.testing.assert_allclose(got.astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    assert progress == [(4, 10), (8, 10), (10, 10)]

    key_dir = tmp_path / "cache" / "tiny-abc123"
    assert sorted(p.name for p in key_dir.iterdir()) == [
        "meta.json",
        "shard-000000.npy",
        "shard-000000.parquet",
        "shard-000001.npy",
        "shard-000001.parquet",
        "shard-000002.npy",
        "shard-000002.parquet",
    ]
    meta = json.loads((key_dir / "meta.json").read_text())
    assert (meta["tokens"], meta["dim"], meta["dtype"]) == (T, D, "float16")
    assert json.loads((tmp_path / "cache" / "ACTIVE").read_text())["cache_key"] == "tiny-abc123"
    assert dataset.last_save_stats["computed"] == 10
    assert dataset.last_save_stats["shards_written"] == 3


def test_get_preserves_order_and_duplicates(dataset: FeatureCacheDataset) -> None:
    dataset.save(_job(_images(10), CountingEncoder()))
    cache = dataset.load()
    ids = ["img009", "img000", "img009", "img004", "img000", "img007"]
    got = cache.get(ids)
    for k, image_id in enumerate(ids):
        np.testing.assert_array_equal(got[k], cache.get([image_id])[0])
        np.testing.assert_allclose(
            got[k].astype(np.float32), _features_for(image_id, f"h-{image_id}"), atol=1e-2
        )
    assert cache.get([]).shape == (0, T, D)
    with pytest.raises(KeyError, match="not in feature cache"):
        cache.get(["img000", "missing-id"])

    buffer = np.zeros((len(ids), T, D), dtype=np.float16)
    assert cache.get(ids, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, got)
    with pytest.raises(ValueError, match="out must be"):
        cache.get(ids, out=np.zeros((len(ids), T, D), dtype=np.float32))
    with_prefetch = FeatureCacheDataset(filepath=dataset._describe()["filepath"], prefetch=True)
    np.testing.assert_array_equal(with_prefetch.load().get(ids), got)


def test_second_save_with_nothing_changed_encodes_nothing(dataset: FeatureCacheDataset) -> None:
    dataset.save(_job(_images(9), CountingEncoder()))
    encoder = CountingEncoder()
    dataset.save(_job(_images(9), encoder))
    assert encoder.calls == []
    assert dataset.last_save_stats["computed"] == 0
    assert dataset.last_save_stats["reused"] == 9
    assert dataset.last_save_stats["shards_written"] == 0
    last_save = dataset.load().last_save  # visible to nodes that only get the handle
    assert (last_save["computed"], last_save["reused"]) == (0, 9)


def test_duplicate_rows_are_deduplicated(dataset: FeatureCacheDataset) -> None:
    images = _images(3)
    encoder = CountingEncoder()
    dataset.save(_job(pd.concat([images, images, images.iloc[:1]]), encoder))
    assert sorted(encoder.encoded_ids) == ["img000", "img001", "img002"]
    assert len(dataset.load()) == 3


def test_same_id_with_two_hashes_in_one_job_is_rejected(dataset: FeatureCacheDataset) -> None:
    images = _images(2)
    clash = images.iloc[:1].assign(content_hash="other")
    with pytest.raises(DatasetError, match="several content hashes"):
        dataset.save(_job(pd.concat([images, clash]), CountingEncoder()))


def test_changed_image_hash_recomputes_exactly_that_image(dataset: FeatureCacheDataset) -> None:
    dataset.save(_job(_images(8), CountingEncoder()))
    encoder = CountingEncoder()
    dataset.save(_job(_images(8, changed={"img005": "h-new"}), encoder))
    assert encoder.encoded_ids == ["img005"]

    cache = dataset.load()
    assert len(cache) == 8  # the old row is shadowed, not duplicated
    index = cache.index().set_index("image_id")
    assert index.loc["img005", "content_hash"] == "h-new"
    np.testing.assert_allclose(
        cache.get(["img005"])[0].astype(np.float32), _features_for("img005", "h-new"), atol=1e-2
    )


def test_changed_cache_key_recomputes_everything_in_new_dir(
    dataset: FeatureCacheDataset, tmp_path: Path
) -> None:
    dataset.save(_job(_images(6), CountingEncoder()))
    encoder = CountingEncoder()
    new_description = {**DESCRIPTION, "image_size": 64}
    dataset.save(_job(_images(6), encoder, cache_key="tiny-def456", description=new_description))
    assert sorted(encoder.encoded_ids) == [f"img{i:03d}" for i in range(6)]
    assert (tmp_path / "cache" / "tiny-abc123" / "shard-000000.npy").exists()
    assert (tmp_path / "cache" / "tiny-def456" / "shard-000000.npy").exists()
    cache = dataset.load()
    assert cache.cache_key == "tiny-def456"
    assert cache.description == new_description


def test_same_key_with_other_description_is_rejected(dataset: FeatureCacheDataset) -> None:
    dataset.save(_job(_images(2), CountingEncoder()))
    with pytest.raises(DatasetError, match="already holds features"):
        dataset.save(_job(_images(2), CountingEncoder(), description={"backbone": "other"}))


def test_interrupted_save_keeps_completed_shards_and_resumes(
    dataset: FeatureCacheDataset, tmp_path: Path
) -> None:
    images = _images(10)  # shards of 4: 4 + 4 + 2
    crashing = CountingEncoder(fail_on_call=3)
    with pytest.raises(DatasetError, match="simulated crash"):
        dataset.save(_job(images, crashing))
    key_dir = tmp_path / "cache" / "tiny-abc123"
    assert sorted(p.name for p in key_dir.glob("shard-*.parquet")) == [
        "shard-000000.parquet",
        "shard-000001.parquet",
    ]
    # No successful save yet: nothing is active.
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="No feature cache"):
        dataset.load()

    resumed = CountingEncoder()
    dataset.save(_job(images, resumed))
    assert resumed.encoded_ids == ["img008", "img009"]
    assert dataset.last_save_stats["reused"] == 8
    cache = dataset.load()
    assert len(cache) == 10
    np.testing.assert_allclose(
        cache.get(["img001"])[0].astype(np.float32), _features_for("img001", "h-img001"), atol=1e-2
    )


def test_interrupted_save_under_new_key_keeps_old_key_active(dataset: FeatureCacheDataset) -> None:
    dataset.save(_job(_images(4), CountingEncoder()))
    with pytest.raises(DatasetError):
        dataset.save(
            _job(
                _images(4),
                CountingEncoder(fail_on_call=1),
                cache_key="tiny-new",
                description={"backbone": "b"},
            )
        )
    assert dataset.exists()
    assert dataset.load().cache_key == "tiny-abc123"


def test_half_written_shard_is_ignored_and_removed(
    dataset: FeatureCacheDataset, tmp_path: Path
) -> None:
    dataset.save(_job(_images(4), CountingEncoder()))
    key_dir = tmp_path / "cache" / "tiny-abc123"
    # Simulate a crash between the .npy rename and its .parquet commit marker, plus a
    # leftover temporary file from a SIGKILL mid-write.
    orphan = key_dir / "shard-000001.npy"
    np.save(orphan, np.full((4, T, D), 7, dtype=np.float16))
    stale = key_dir / ".shard-000002.npy.tmp-deadbeef.npy"
    stale.write_bytes(b"partial")

    cache = dataset.load()
    assert len(cache) == 4
    assert set(cache.index()["shard"]) == {0}

    encoder = CountingEncoder()
    dataset.save(_job(_images(6), encoder))
    assert encoder.encoded_ids == ["img004", "img005"]
    assert not stale.exists()
    assert dataset.last_save_stats["incomplete_removed"] == 2
    # The orphan's index was reused by the new, complete shard.
    assert (key_dir / "shard-000001.parquet").exists()
    got = dataset.load().get(["img004"])[0].astype(np.float32)
    np.testing.assert_allclose(got, _features_for("img004", "h-img004"), atol=1e-2)


def test_exists_and_missing(dataset: FeatureCacheDataset, tmp_path: Path) -> None:
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="No feature cache"):
        dataset.load()
    dataset.save(_job(_images(2), CountingEncoder()))
    assert dataset.exists()
    (tmp_path / "cache" / "tiny-abc123" / "meta.json").unlink()
    assert not dataset.exists()


@pytest.mark.parametrize(
    ("bad_output", "message"),
    [
        (lambda rows: np.zeros((len(rows), T)), "expected"),
        (lambda rows: np.zeros((len(rows) + 1, T, D)), "expected"),
        (lambda rows: np.full((len(rows), T, D), 1e6), "not finite"),
    ],
)
def test_bad_encoder_output_is_rejected(
    dataset: FeatureCacheDataset, bad_output: Callable, message: str
) -> None:
    with pytest.raises(DatasetError, match=message):
        dataset.save(_job(_images(2), bad_output))
    assert not dataset.exists()


def test_invalid_jobs(dataset: FeatureCacheDataset) -> None:
    with pytest.raises(DatasetError, match="Invalid cache_key"):
        dataset.save(_job(_images(2), CountingEncoder(), cache_key="../escape"))
    with pytest.raises(DatasetError, match="lacks column"):
        dataset.save(_job(_images(2).drop(columns="content_hash"), CountingEncoder()))
    with pytest.raises(DatasetError, match="FeatureExtractionJob"):
        dataset.save({"not": "a job"})  # type: ignore[arg-type]


def test_non_local_path_rejected() -> None:
    with pytest.raises(DatasetError, match="local directory"):
        FeatureCacheDataset(filepath="s3://bucket/cache")


def test_through_data_catalog(tmp_path: Path) -> None:
    dataset = FeatureCacheDataset(filepath=tmp_path / "cache")
    catalog = DataCatalog({"vit_cache": dataset})
    encoder = CountingEncoder()
    catalog.save("vit_cache", _job(_images(5), encoder))
    assert len(encoder.encoded_ids) == 5
    assert catalog.exists("vit_cache")
    cache = catalog.load("vit_cache")
    assert len(cache) == 5 and cache.get(["img002"]).shape == (1, T, D)
    assert catalog["vit_cache"].last_save_stats["computed"] == 5

    from_config = DataCatalog.from_config(
        {
            "vit_cache": {
                "type": "dqe_cir_pipeline.datasets.feature_cache.FeatureCacheDataset",
                "filepath": str(tmp_path / "cache"),
            }
        }
    )
    assert len(from_config.load("vit_cache")) == 5
    assert "FeatureCacheDataset" in repr(from_config["vit_cache"])


def test_handle_and_job_copy_cheaply(dataset: FeatureCacheDataset) -> None:
    encoder = CountingEncoder()
    job = _job(_images(4), encoder)
    assert copy.deepcopy(job) is job  # Kedro's MemoryDataset must not copy the encoder
    dataset.save(job)
    cache = dataset.load()
    before = cache.get(["img001"])
    clone = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(clone.get(["img001"]), before)
    assert len(copy.deepcopy(cache)) == 4
