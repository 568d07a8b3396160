"""A resumable, memory-mapped on-disk cache of frozen ViT token features.

The vision transformer of the backbone is frozen, so its token features for an image
depend only on the image bytes, the backbone and the preprocessing. They are
extracted once and read back at random during training. For ViT-g/14 an image is a
(257, 1408) matrix; the FashionIQ gallery in float16 is ~54 GB, so this module never
needs the whole cache in RAM: shards are ``.npy`` files opened with
``np.load(mmap_mode="r")`` and only the requested rows are read.

The on-disk layout (shards committed by their Parquet index, an ``ACTIVE`` marker
naming the current cache key) is implemented in
:mod:`dqe_cir_pipeline.datasets.feature_shards`; an interrupted extraction resumes
from the last committed shard.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.io.core import AbstractDataset, DatasetError, get_protocol_and_path

from dqe_cir_pipeline.datasets.feature_shards import (
    ACTIVE_FILE,
    KEY_RE,
    META_FILE,
    STORED_DTYPE,
    ShardInfo,
    complete_shards,
    damaged_message,
    missing_images,
    new_meta,
    read_active,
    read_index,
    read_meta,
    remove_incomplete,
    set_damaged_shards_aside,
    shard_stem,
    stored_features,
    verify_shard,
    write_shard,
)
from dqe_cir_pipeline.io_utils import atomic_write_json, canonical_json

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("image_id", "path", "content_hash")


@dataclass(frozen=True)
class FeatureExtractionJob:
    """A description of a feature extraction, executed lazily by ``FeatureCacheDataset``.

    The extraction node returns this object instead of the features themselves; the
    dataset's ``save`` then encodes only the images missing from the cache, shard by
    shard, so the features never need to fit in memory and an interrupted run
    resumes where it stopped.

    Kedro's ``MemoryDataset`` deep-copies non-DataFrame outputs; a job holds a live
    encoder (possibly a model on a GPU), so ``copy.deepcopy`` returns the job itself.
    Treat a job as immutable.

    Attributes:
        images: One row per image, with at least the columns ``image_id`` (str),
            ``path`` and ``content_hash`` (e.g. SHA-256 of the file bytes). Rows
            repeating the same (image_id, content_hash) are deduplicated.
        cache_key: Directory name for these features; the caller derives it from the
            backbone key and the preprocessing settings (e.g. with
            ``io_utils.stable_hash``) so a change of either starts a new cache.
            Letters, digits, ``.``, ``_`` and ``-`` only.
        description: JSON-serialisable settings the key was derived from; stored in
            ``meta.json`` and checked against on later saves under the same key.
        encode: Given a DataFrame of image rows (a slice of ``images``) returns their
            token features as an array of shape (n, T, D), any float dtype; they are
            stored as float16.
        shard_size: Images per shard (and per ``encode`` call).
        progress: Optional callback ``progress(done, total)`` called after each
            shard, counting images to compute in this save.
        verify_checksums: Before reusing the cached shards, compare each one's CRC-32
            with the one recorded when it was written (reads the whole cache once;
            sizes are always checked). A damaged shard is set aside and recomputed.
    """

    images: pd.DataFrame
    cache_key: str
    description: dict[str, Any]
    encode: Callable[[pd.DataFrame], np.ndarray]
    shard_size: int = 1024
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    verify_checksums: bool = True

    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureExtractionJob:
        return self


class FeatureCache:
    """A read-only handle on one cache key: random access to per-image token features.

    Shards are memory-mapped lazily on first use and kept open; ``get`` reads only the
    requested rows. When an image id was cached several times (its content changed),
    the newest shard wins.

    The handle can be pickled / deep-copied cheaply (open memory maps are dropped and
    re-opened on demand), so it survives Kedro's copying of in-memory outputs and
    ``DataLoader`` worker processes.
    """

    def __init__(
        self,
        *,
        root: Path,
        meta: dict[str, Any],
        index: pd.DataFrame,
        prefetch: bool = False,
        last_save: dict[str, Any] | None = None,
    ) -> None:
        """Creates a handle; use ``FeatureCacheDataset.load`` rather than this.

        Args:
            root: The cache-key directory holding the shards.
            meta: Parsed ``meta.json``.
            index: Winning rows: columns image_id, content_hash, shard, row, with a
                unique ``image_id``.
            prefetch: Before copying a batch, tell the kernel which rows are about to
                be read (``posix_fadvise(WILLNEED)``) so it fetches them concurrently
                instead of one page fault at a time. Worth it only when the cache does
                not fit the page cache: on the 2-core dev VM, ViT-g batches read from
                disk were 1.2-1.6x faster with it, batches already in RAM ~2x slower
                (see ``benchmarks/bench_feature_cache.py --prefetch``).
            last_save: Statistics of the save that activated this key.
        """
        self._last_save = dict(last_save or {})
        self._prefetch = prefetch and hasattr(os, "posix_fadvise")
        self._root = Path(root)
        self._meta = dict(meta)
        self._index = index.reset_index(drop=True)
        self._position = pd.Index(self._index["image_id"])
        self._shard_of = self._index["shard"].to_numpy(dtype=np.int64)
        self._row_of = self._index["row"].to_numpy(dtype=np.int64)
        self._maps: dict[int, np.ndarray] = {}

    # -- metadata -------------------------------------------------------------------
    @property
    def cache_key(self) -> str:
        """The cache key (directory name) this handle reads."""
        return str(self._meta["cache_key"])

    @property
    def description(self) -> dict[str, Any]:
        """The settings the cache key was derived from (backbone, preprocessing)."""
        return dict(self._meta.get("description", {}))

    @property
    def last_save(self) -> dict[str, Any]:
        """Stats of the save that activated this key (computed, reused, seconds, ...)."""
        return dict(self._last_save)

    @property
    def tokens(self) -> int:
        """T, the number of tokens per image."""
        return int(self._meta["tokens"])

    @property
    def dim(self) -> int:
        """D, the feature width of a token."""
        return int(self._meta["dim"])

    @property
    def image_ids(self) -> list[str]:
        """All cached image ids (unique, in index order)."""
        return self._index["image_id"].tolist()

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._position

    def __iter__(self) -> Iterator[str]:
        return iter(self.image_ids)

    def __repr__(self) -> str:
        return (
            f"FeatureCache(key={self.cache_key!r}, images={len(self)}, "
            f"tokens={self.tokens}, dim={self.dim}, root={str(self._root)!r})"
        )

    def index(self) -> pd.DataFrame:
        """Returns a copy of the index: image_id, content_hash, shard, row."""
        return self._index.copy()

    # -- reading --------------------------------------------------------------------
    def _shard(self, index: int) -> np.ndarray:
        mapped = self._maps.get(index)
        if mapped is None:
            path = self._root / f"{shard_stem(index)}.npy"
            shard = ShardInfo(index, path, self._root / f"{shard_stem(index)}.parquet")
            problem = verify_shard(shard, checksum=False)
            if problem is not None:
                raise DatasetError(damaged_message(path, problem))
            try:
                mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise DatasetError(damaged_message(path, f"unreadable: {exc}")) from exc
            if mapped.ndim != 3 or mapped.shape[1:] != (self.tokens, self.dim):
                raise DatasetError(
                    f"Shard {path} has shape {mapped.shape}, expected (n, {self.tokens}, "
                    f"{self.dim}) as recorded in {META_FILE}."
                )
            self._maps[index] = mapped
        return mapped

    def _advise_willneed(self, shard: int, rows: np.ndarray) -> None:
        mapped = self._shard(shard)
        row_bytes = self.tokens * self.dim * mapped.itemsize
        base = int(getattr(mapped, "offset", 0))
        fd = os.open(self._root / f"{shard_stem(shard)}.npy", os.O_RDONLY)
        try:
            for row in rows:
                os.posix_fadvise(fd, base + int(row) * row_bytes, row_bytes, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def get(self, ids: Sequence[str], out: np.ndarray | None = None) -> np.ndarray:
        """Reads the features of ``ids``, in the given order (repeats allowed).

        Args:
            ids: Image ids, each of which must be cached.
            out: Optional float16 C-contiguous buffer of shape (len(ids), T, D) to fill.
                Reusing one buffer across batches avoids first-touch page faults on
                fresh memory, which dominate on some virtual machines.

        Returns:
            Array of shape (len(ids), T, D), dtype float16 (``out`` if given, else a
            fresh array; never a view of the memory map).

        Raises:
            KeyError: If any id is not in the cache (the message lists a few).
            ValueError: If ``out`` has the wrong shape or dtype.
        """
        ids = list(ids)
        shape = (len(ids), self.tokens, self.dim)
        if out is None:
            out = np.empty(shape, dtype=STORED_DTYPE)
        elif out.shape != shape or out.dtype != STORED_DTYPE or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous float16 array of shape {shape}, got "
                f"{out.dtype} {out.shape}."
            )
        if not ids:
            return out
        positions = self._position.get_indexer(ids)
        if (positions < 0).any():
            missing = [ids[i] for i in np.flatnonzero(positions < 0)[:5]]
            raise KeyError(
                f"{int((positions < 0).sum())} image id(s) not in feature cache "
                f"{self.cache_key!r}, e.g. {missing}"
            )
        shards = self._shard_of[positions]
        rows = self._row_of[positions]
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            # Ascending row order turns random access into a forward sweep of the file.
            order = np.argsort(rows[where], kind="stable")
            where, shard_rows = where[order], rows[where][order]
            if self._prefetch:
                self._advise_willneed(int(shard), np.unique(shard_rows))
            mapped = self._shard(int(shard))
            # Row by row straight into ``out``: fancy indexing would first build a
            # temporary copy of the whole batch (twice the memory traffic).
            for position, row in zip(where.tolist(), shard_rows.tolist(), strict=True):
                out[position] = mapped[row]
        return out

    def close(self) -> None:
        """Drops the open memory maps (they are re-opened on the next read)."""
        self._maps.clear()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


class FeatureCacheDataset(AbstractDataset["FeatureExtractionJob", FeatureCache]):
    """Kedro dataset for the resumable ViT token-feature cache.

    ``save`` takes a :class:`FeatureExtractionJob` and encodes only the images whose
    (image_id, content_hash) is not cached yet under the job's ``cache_key``, one
    shard at a time; completed shards survive an interruption and the next save
    resumes. ``load`` returns a :class:`FeatureCache` for the active key (the key of
    the last successful save).

    Example catalog entry (``conf/base/catalog.yml``):

    .. code-block:: yaml

        vit_token_cache:
          type: dqe_cir_pipeline.datasets.feature_cache.FeatureCacheDataset
          filepath: data/04_feature/vit_tokens
          prefetch: false  # true when the cache is larger than RAM (read-ahead hints)

    Example Python use:

    .. code-block:: python

        ds = FeatureCacheDataset(filepath="data/04_feature/vit_tokens")
        ds.save(FeatureExtractionJob(images=df, cache_key=key, description=desc,
                                     encode=encode_batch))
        cache = ds.load()
        feats = cache.get(["img_1", "img_7"])  # (2, T, D) float16

    Security: loading never unpickles. Shards are read with
    ``np.load(..., allow_pickle=False)`` (plain numeric arrays only), indexes are
    Parquet and markers JSON, so a tampered cache directory can yield wrong numbers
    but cannot execute code. Cache keys are validated as single path components.

    Concurrency: one writer per directory at a time (a save deletes incomplete
    shards it finds). Readers may run while a writer appends shards.
    """

    def __init__(
        self,
        *,
        filepath: str | Path,
        prefetch: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Creates a new ``FeatureCacheDataset``.

        Args:
            filepath: Local directory of the cache (memory mapping needs a local
                file system; ``file://`` URLs are accepted).
            prefetch: Passed to the loaded :class:`FeatureCache` (read-ahead hints
                for random batch reads; see there).
            metadata: Free-form metadata, ignored by Kedro itself.

        Raises:
            DatasetError: If ``filepath`` is not on the local file system.
        """
        protocol, path = get_protocol_and_path(str(filepath))
        if protocol != "file":
            raise DatasetError(
                f"FeatureCacheDataset needs a local directory (memory-mapped reads); "
                f"got protocol {protocol!r} in {filepath!r}."
            )
        self._root = Path(path)
        self._prefetch = prefetch
        self.metadata = metadata
        self.last_save_stats: dict[str, Any] = {}

    # -- kedro hooks ----------------------------------------------------------------
    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._root), "protocol": "file", "prefetch": self._prefetch}

    def _exists(self) -> bool:
        try:
            key, _ = read_active(self._root)
        except DatasetError:
            return False
        key_dir = self._root / key
        if not (key_dir / META_FILE).is_file():
            return False
        return all(shard.npy.is_file() for shard in complete_shards(key_dir))

    def load(self) -> FeatureCache:
        """Opens the active cache key for reading.

        Returns:
            A :class:`FeatureCache` handle (no feature data is read yet).

        Raises:
            DatasetError: If there is no completed cache under ``filepath``, or a shard
                is damaged (its size differs from the one recorded when it was written:
                the message names the file).
        """
        key, active = read_active(self._root)
        key_dir = self._root / key
        meta = read_meta(key_dir)
        if meta is None:
            raise DatasetError(
                f"Feature cache {self._root} names active key {key!r} but "
                f"{key_dir / META_FILE} is missing; re-run the feature extraction."
            )
        for shard in complete_shards(key_dir):  # sizes only: a stat and a header each
            problem = verify_shard(shard, checksum=False)
            if problem is not None:
                raise DatasetError(damaged_message(shard.npy, problem))
        index = read_index(key_dir)
        logger.info(
            "Opened feature cache %s/%s: %d images, %d x %d tokens",
            self._root,
            key,
            len(index),
            meta["tokens"],
            meta["dim"],
        )
        return FeatureCache(
            root=key_dir,
            meta=meta,
            index=index,
            prefetch=self._prefetch,
            last_save=active.get("last_save"),
        )

    def save(self, data: FeatureExtractionJob) -> None:
        """Encodes the images missing from the cache and activates the job's key.

        Args:
            data: The extraction job.

        Raises:
            DatasetError: On an invalid job, a mismatch with the existing
                ``meta.json`` or bad encoder output (Kedro wraps other errors, such as
                one raised by ``encode``, in ``DatasetError`` too).
        """
        started = time.perf_counter()
        job = data
        if not isinstance(job, FeatureExtractionJob):
            raise DatasetError(
                f"FeatureCacheDataset.save expects a FeatureExtractionJob, got "
                f"{type(job).__name__}."
            )
        images = self._validate_job(job)
        key_dir = self._root / job.cache_key
        key_dir.mkdir(parents=True, exist_ok=True)
        meta = self._matching_meta(key_dir, job)

        removed = remove_incomplete(key_dir)
        damaged = set_damaged_shards_aside(key_dir, checksum=job.verify_checksums)
        shards = complete_shards(key_dir)
        missing = missing_images(images, shards)
        reused = len(images) - len(missing)
        logger.info(
            "Feature cache %s/%s: %d images requested, %d cached, %d to compute%s",
            self._root,
            job.cache_key,
            len(images),
            reused,
            len(missing),
            f" (removed {removed} incomplete shard file(s))" if removed else "",
        )

        next_index = max((shard.index for shard in shards), default=-1) + 1
        meta, shards_written, encode_seconds = self._encode_missing(
            job, key_dir, missing, meta, next_index
        )
        if meta is None:  # nothing to compute and no meta: only possible if corrupted
            raise DatasetError(
                f"{key_dir} has cached shards but no {META_FILE}; delete the directory "
                "and re-run the extraction."
            )
        stats = {
            "cache_key": job.cache_key,
            "requested": len(images),
            "computed": len(missing),
            "reused": reused,
            "shards_written": shards_written,
            "incomplete_removed": removed,
            "damaged_set_aside": damaged,
            "encode_seconds": encode_seconds,
            "seconds": time.perf_counter() - started,
        }
        atomic_write_json(
            self._root / ACTIVE_FILE,
            {
                "cache_key": job.cache_key,
                "updated": datetime.now(timezone.utc).isoformat(),
                "last_save": stats,
            },
        )
        self.last_save_stats = stats

    # -- helpers --------------------------------------------------------------------
    def _matching_meta(self, key_dir: Path, job: FeatureExtractionJob) -> dict[str, Any] | None:
        """The key's existing ``meta.json`` (or ``None``), checked against the job.

        Raises:
            DatasetError: If the stored description differs from the job's.
        """
        meta = read_meta(key_dir)
        if meta is not None and canonical_json(meta.get("description", {})) != canonical_json(
            job.description
        ):
            raise DatasetError(
                f"Cache key {job.cache_key!r} under {self._root} already holds features "
                f"described by {meta.get('description')!r}, but the job describes "
                f"{job.description!r}. Derive the cache key from all of the description."
            )
        return meta

    def _encode_missing(
        self,
        job: FeatureExtractionJob,
        key_dir: Path,
        missing: pd.DataFrame,
        meta: dict[str, Any] | None,
        next_index: int,
    ) -> tuple[dict[str, Any] | None, int, float]:
        """Encodes ``missing`` shard by shard, writing ``meta.json`` with the first one.

        Args:
            job: The extraction job.
            key_dir: The cache-key directory.
            missing: Image rows to encode.
            meta: The key's metadata, ``None`` while no shard was ever written.
            next_index: Number of the first new shard.

        Returns:
            ``(meta, shards written, seconds spent in encode)``.
        """
        shards_written = 0
        encode_seconds = 0.0
        for start in range(0, len(missing), job.shard_size):
            batch = missing.iloc[start : start + job.shard_size].reset_index(drop=True)
            tic = time.perf_counter()
            features = np.asarray(job.encode(batch))
            encode_seconds += time.perf_counter() - tic
            features = stored_features(features, len(batch), meta)
            if meta is None:
                meta = new_meta(job.cache_key, job.description, features)
                atomic_write_json(key_dir / META_FILE, meta)
            write_shard(key_dir, next_index, batch, features)
            next_index += 1
            shards_written += 1
            done = start + len(batch)
            logger.info(
                "Feature cache %s: shard %d written (%d/%d images)",
                job.cache_key,
                next_index - 1,
                done,
                len(missing),
            )
            if job.progress is not None:
                job.progress(done, len(missing))
        return meta, shards_written, encode_seconds

    @staticmethod
    def _validate_job(job: FeatureExtractionJob) -> pd.DataFrame:
        if not isinstance(job.cache_key, str) or not KEY_RE.match(job.cache_key):
            raise DatasetError(
                f"Invalid cache_key {job.cache_key!r}: use 1-128 letters, digits, '.', "
                "'_' or '-', starting with a letter or digit."
            )
        if int(job.shard_size) <= 0:
            raise DatasetError(f"shard_size must be positive, got {job.shard_size}.")
        absent = [col for col in REQUIRED_COLUMNS if col not in job.images.columns]
        if absent:
            raise DatasetError(f"FeatureExtractionJob.images lacks column(s) {absent}.")
        images = job.images.copy()
        images["image_id"] = images["image_id"].astype(str)
        images["content_hash"] = images["content_hash"].astype(str)
        images = images.drop_duplicates(["image_id", "content_hash"]).reset_index(drop=True)
        if images.empty:
            raise DatasetError("FeatureExtractionJob.images is empty; nothing to cache.")
        clashes = images.loc[images["image_id"].duplicated(keep=False), "image_id"]
        if not clashes.empty:
            raise DatasetError(
                "FeatureExtractionJob.images gives several content hashes for the same "
                f"image id(s), e.g. {clashes.unique()[:5].tolist()}."
            )
        return images
