"""On-disk layout of the feature cache: shard files, their indexes and the markers.

Layout under the cache root (a local directory)::

    <root>/ACTIVE                         {"cache_key": ...}  (written last)
    <root>/<cache_key>/meta.json          tokens, dim, dtype, description
    <root>/<cache_key>/shard-000000.npy   float16, (n, T, D)
    <root>/<cache_key>/shard-000000.parquet   image_id, content_hash, row

Each shard's ``.npy`` is written first and its ``.parquet`` index second, both
atomically (temp file + ``os.replace``). The parquet is the commit marker: a shard
without it is incomplete, ignored by readers and deleted by the next save. That is
what makes an interrupted extraction resumable.

Integrity: the index records its ``.npy``'s byte size and CRC-32 (Parquet key-value
metadata ``dqe_cir.npy``). :func:`verify_shard` compares the file with them (and with
the size its own ``.npy`` header implies), so a shard truncated or overwritten after it
was committed is found and named: when the cache is opened (sizes), and by the
extraction's reuse check (sizes and checksums), which sets it aside and recomputes it.

Nothing here unpickles: shards are read with ``np.load(..., allow_pickle=False)``,
indexes are Parquet and markers JSON. The functions raise Kedro's ``DatasetError``
because :mod:`dqe_cir_pipeline.datasets.feature_cache` surfaces them from a dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from kedro.io.core import DatasetError

from dqe_cir_pipeline.io_utils import TEMP_MARKER, atomic_save, set_aside

logger = logging.getLogger(__name__)

FORMAT = "dqe-cir-feature-cache/1"
ACTIVE_FILE = "ACTIVE"
META_FILE = "meta.json"
STORED_DTYPE = np.float16
SHARD_RE = re.compile(r"^shard-(\d{6})\.(npy|parquet)$")
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INDEX_COLUMNS = ("image_id", "content_hash", "shard", "row")
#: Parquet metadata key of a shard index holding its ``.npy``'s size, CRC-32 and rows.
NPY_META_KEY = b"dqe_cir.npy"
_CRC_CHUNK = 8 << 20


def shard_stem(index: int) -> str:
    """File name stem of shard ``index`` (``shard-000042``)."""
    return f"shard-{index:06d}"


@dataclass(frozen=True)
class ShardInfo:
    """A committed shard: its number and the paths of its data and index files."""

    index: int
    npy: Path
    parquet: Path


def read_active(root: Path) -> tuple[str, dict[str, Any]]:
    """Reads the ``ACTIVE`` marker of a cache root.

    Args:
        root: The cache root directory.

    Returns:
        ``(cache_key, marker content)``.

    Raises:
        DatasetError: If the marker is absent, not valid JSON or names a bad key.
    """
    active = root / ACTIVE_FILE
    try:
        content = json.loads(active.read_text(encoding="utf-8"))
        key = content["cache_key"]
    except FileNotFoundError as exc:
        raise DatasetError(
            f"No feature cache at {root}: {active} does not exist. Run the "
            "feature extraction (embedding_extraction pipeline) first."
        ) from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"Corrupt feature cache marker {active}: {exc}") from exc
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise DatasetError(f"Corrupt feature cache marker {active}: bad key {key!r}.")
    return key, content


def read_meta(key_dir: Path) -> dict[str, Any] | None:
    """Parsed ``meta.json`` of a cache-key directory, or ``None`` if there is none.

    Raises:
        DatasetError: If the file is not valid JSON or records another cache format.
    """
    path = key_dir / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"Corrupt feature cache metadata {path}: {exc}. Delete {key_dir} and re-run the "
            "extraction."
        ) from exc
    if meta.get("format") != FORMAT:
        raise DatasetError(f"{path} has format {meta.get('format')!r}, expected {FORMAT}.")
    return meta


def complete_shards(key_dir: Path) -> list[ShardInfo]:
    """Committed shards (index and data both present) of a key, in ascending order."""
    shards: list[ShardInfo] = []
    if not key_dir.is_dir():
        return shards
    for path in key_dir.iterdir():
        match = SHARD_RE.match(path.name)
        if match and match.group(2) == "parquet":
            index = int(match.group(1))
            npy = key_dir / f"{shard_stem(index)}.npy"
            if npy.is_file():
                shards.append(ShardInfo(index=index, npy=npy, parquet=path))
            else:
                logger.warning("Ignoring shard index %s without its .npy data", path)
    return sorted(shards, key=lambda shard: shard.index)


def remove_incomplete(key_dir: Path) -> int:
    """Deletes shard data without a commit marker and stale temporary files.

    Returns:
        The number of files removed.
    """
    names = {path.name for path in key_dir.iterdir()}
    removed = 0
    for name in sorted(names):
        match = SHARD_RE.match(name)
        stale_tmp = name.startswith(".") and TEMP_MARKER in name
        orphan = (
            match is not None
            and match.group(2) == "npy"
            and f"{shard_stem(int(match.group(1)))}.parquet" not in names
        )
        if stale_tmp or orphan:
            logger.warning("Removing incomplete cache file %s", key_dir / name)
            with contextlib.suppress(FileNotFoundError):
                (key_dir / name).unlink()
            removed += 1
    return removed


def _read_shard_index(path: Path, columns: list[str]) -> pd.DataFrame:
    """A shard's Parquet index, with an error that names the file.

    Raises:
        DatasetError: The file cannot be read.
    """
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"Cannot read feature cache index {path}: {exc}") from exc


def cached_pairs(shards: list[ShardInfo]) -> set[tuple[str, str]]:
    """The (image_id, content_hash) pairs stored in ``shards``."""
    pairs: set[tuple[str, str]] = set()
    for shard in shards:
        table = _read_shard_index(shard.parquet, ["image_id", "content_hash"])
        pairs.update(zip(table["image_id"], table["content_hash"], strict=True))
    return pairs


def read_index(key_dir: Path) -> pd.DataFrame:
    """The winning row of every cached image id of a key.

    Returns:
        Columns image_id, content_hash, shard, row with a unique ``image_id``; when an
        id was cached several times, the row of the newest shard.
    """
    tables = []
    for shard in complete_shards(key_dir):
        table = _read_shard_index(shard.parquet, ["image_id", "content_hash", "row"])
        table["shard"] = shard.index
        tables.append(table)
    if not tables:
        return pd.DataFrame(
            {
                "image_id": pd.Series(dtype=str),
                "content_hash": pd.Series(dtype=str),
                "shard": pd.Series(dtype=np.int64),
                "row": pd.Series(dtype=np.int64),
            }
        )
    index = pd.concat(tables, ignore_index=True)
    # Shards are in ascending order, so keeping the last row lets the newest win.
    index = index.drop_duplicates("image_id", keep="last").reset_index(drop=True)
    return index[list(INDEX_COLUMNS)]


def write_shard(key_dir: Path, index: int, batch: pd.DataFrame, features: np.ndarray) -> None:
    """Writes shard ``index``: its features, then the index that commits it.

    Args:
        key_dir: The cache-key directory.
        index: Shard number.
        batch: The image rows (image_id, content_hash) in feature order.
        features: ``(len(batch), T, D)`` array in the stored dtype.
    """
    stem = shard_stem(index)
    written: dict[str, int] = {}

    def save_npy(tmp: Path) -> None:
        np.save(tmp, features)
        written.update(bytes=tmp.stat().st_size, crc32=file_crc32(tmp), rows=len(features))

    atomic_save(key_dir / f"{stem}.npy", save_npy)
    table = pa.Table.from_pandas(
        pd.DataFrame(
            {
                "image_id": batch["image_id"].astype(str),
                "content_hash": batch["content_hash"].astype(str),
                "row": np.arange(len(batch), dtype=np.int64),
            }
        ),
        preserve_index=False,
    )
    metadata = {**(table.schema.metadata or {}), NPY_META_KEY: json.dumps(written).encode()}
    table = table.replace_schema_metadata(metadata)
    # Written last: its presence commits the shard.
    atomic_save(key_dir / f"{stem}.parquet", lambda tmp: pq.write_table(table, tmp))


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read in chunks (about 3 GB/s on the 2-core VM)."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CRC_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def recorded_npy(shard: ShardInfo) -> dict[str, int] | None:
    """What the shard's index recorded about its ``.npy`` (bytes, crc32, rows), if anything.

    ``None`` for shards written before the index carried it (their size is still checked
    against their own header).

    Raises:
        DatasetError: The index cannot be read.
    """
    try:
        metadata = pq.read_schema(shard.parquet).metadata or {}
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise DatasetError(f"Cannot read feature cache index {shard.parquet}: {exc}") from exc
    raw = metadata.get(NPY_META_KEY)
    return None if raw is None else json.loads(raw)


def npy_expected_bytes(path: Path) -> tuple[int, tuple[int, ...]]:
    """The size a ``.npy`` file must have according to its own header, and its shape.

    Raises:
        ValueError: The file does not start with a valid ``.npy`` header.
    """
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"{path}: .npy format {version} is not one this cache writes")
        offset = fh.tell()
    return offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize, tuple(shape)


def verify_shard(shard: ShardInfo, *, checksum: bool) -> str | None:
    """Whether a committed shard's data file is intact.

    Checks that the ``.npy`` has the size its header implies, and the size and row count
    its index recorded; with ``checksum``, also the CRC-32 the index recorded (reads the
    whole file).

    Args:
        shard: The shard.
        checksum: Also compare the recorded CRC-32.

    Returns:
        ``None`` when intact, else what is wrong (e.g. ``"truncated: 1024 of 16512
        bytes"``), for a message that names the file.
    """
    try:
        actual = shard.npy.stat().st_size
        expected, shape = npy_expected_bytes(shard.npy)
        recorded = recorded_npy(shard)
    except (OSError, ValueError, DatasetError) as exc:
        return f"unreadable: {exc}"
    if recorded is not None and recorded.get("bytes") != expected:
        expected = int(recorded["bytes"])
    if actual < expected:
        return f"truncated: {actual} of {expected} bytes"
    if actual != expected:
        return f"{actual} bytes where {expected} were written"
    if recorded is not None and shape[:1] != (recorded.get("rows"),):
        return f"{shape[0] if shape else 0} rows where {recorded.get('rows')} were written"
    if checksum and recorded is not None and file_crc32(shard.npy) != recorded.get("crc32"):
        return "checksum mismatch: the bytes changed after the shard was written"
    return None


def set_shard_aside(shard: ShardInfo, problem: str) -> Path:
    """Rename a damaged shard's data and index out of the cache; returns the data's new path.

    Its images are no longer cached, so the next save recomputes them.
    """
    moved = set_aside(shard.npy)
    with contextlib.suppress(FileNotFoundError):
        set_aside(shard.parquet)
    logger.warning(
        "Feature cache shard %s is damaged (%s): set aside as %s, its images will be "
        "recomputed (delete the file when done with it)",
        shard.npy,
        problem,
        moved,
    )
    return moved


def set_damaged_shards_aside(key_dir: Path, *, checksum: bool) -> int:
    """Set aside every committed shard of a key that fails :func:`verify_shard`.

    Their images count as not cached, so the next save recomputes them.

    Returns:
        How many shards were set aside.
    """
    started = time.perf_counter()
    shards = complete_shards(key_dir)
    damaged = 0
    for shard in shards:
        problem = verify_shard(shard, checksum=checksum)
        if problem is not None:
            set_shard_aside(shard, problem)
            damaged += 1
    logger.info(
        "Feature cache %s: %d shard(s) verified (%s) in %.1fs, %d damaged",
        key_dir,
        len(shards),
        "sizes and checksums" if checksum else "sizes",
        time.perf_counter() - started,
        damaged,
    )
    return damaged


def damaged_message(path: Path, problem: str) -> str:
    """The error for a damaged shard found by a reader: the file, what is wrong, the fix."""
    return (
        f"Feature cache shard {path} is damaged ({problem}). Re-run the extraction "
        "(kedro run --pipelines embedding_extraction): it sets the shard aside and "
        "recomputes its images."
    )


def missing_images(images: pd.DataFrame, shards: list[ShardInfo]) -> pd.DataFrame:
    """The rows of ``images`` whose (image_id, content_hash) no shard holds yet."""
    cached = cached_pairs(shards)
    pairs = list(zip(images["image_id"], images["content_hash"], strict=True))
    missing_mask = np.fromiter((pair not in cached for pair in pairs), bool, len(pairs))
    return images.loc[missing_mask].reset_index(drop=True)


def new_meta(cache_key: str, description: dict[str, Any], features: np.ndarray) -> dict[str, Any]:
    """``meta.json`` content for a new cache key, from its first encoded shard.

    Args:
        cache_key: The key (directory name).
        description: The settings the key was derived from.
        features: The first shard's ``(n, T, D)`` features.

    Returns:
        The metadata: format, key, tokens, dim, stored dtype, description, creation time.
    """
    return {
        "format": FORMAT,
        "cache_key": cache_key,
        "tokens": int(features.shape[1]),
        "dim": int(features.shape[2]),
        "dtype": np.dtype(STORED_DTYPE).name,
        "description": description,
        "created": datetime.now(timezone.utc).isoformat(),
    }


def stored_features(
    features: np.ndarray, expected_rows: int, meta: dict[str, Any] | None
) -> np.ndarray:
    """Checks an encoder's output and converts it to the stored dtype.

    Args:
        features: What ``encode`` returned for a batch.
        expected_rows: The batch size.
        meta: The key's metadata, or ``None`` before its first shard.

    Returns:
        A C-contiguous float16 copy of ``features``.

    Raises:
        DatasetError: On a wrong shape, a non-float dtype, a (T, D) that differs from
            ``meta`` or values that are not finite in float16.
    """
    if features.ndim != 3 or features.shape[0] != expected_rows:
        raise DatasetError(
            f"encode returned shape {features.shape}, expected ({expected_rows}, T, D)."
        )
    if not np.issubdtype(features.dtype, np.floating):
        raise DatasetError(f"encode returned dtype {features.dtype}, expected floats.")
    if meta is not None and features.shape[1:] != (meta["tokens"], meta["dim"]):
        raise DatasetError(
            f"encode returned {features.shape[1:]} tokens x dim but this cache key "
            f"stores ({meta['tokens']}, {meta['dim']})."
        )
    with np.errstate(over="ignore"):  # overflow is reported just below
        stored = np.ascontiguousarray(features, dtype=STORED_DTYPE)
    if not np.isfinite(stored).all():
        # float16 overflows above 65504; storing inf/nan would poison training.
        raise DatasetError("encode returned values that are not finite in float16.")
    return stored
