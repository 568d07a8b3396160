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

Nothing here unpickles: shards are read with ``np.load(..., allow_pickle=False)``,
indexes are Parquet and markers JSON. The functions raise Kedro's ``DatasetError``
because :mod:`dqe_cir_pipeline.datasets.feature_cache` surfaces them from a dataset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from kedro.io.core import DatasetError

from dqe_cir_pipeline.io_utils import TEMP_MARKER, atomic_save

logger = logging.getLogger(__name__)

FORMAT = "dqe-cir-feature-cache/1"
ACTIVE_FILE = "ACTIVE"
META_FILE = "meta.json"
STORED_DTYPE = np.float16
SHARD_RE = re.compile(r"^shard-(\d{6})\.(npy|parquet)$")
KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
INDEX_COLUMNS = ("image_id", "content_hash", "shard", "row")


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
        DatasetError: If the file records another cache format.
    """
    path = key_dir / META_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text(encoding="utf-8"))
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


def cached_pairs(shards: list[ShardInfo]) -> set[tuple[str, str]]:
    """The (image_id, content_hash) pairs stored in ``shards``."""
    pairs: set[tuple[str, str]] = set()
    for shard in shards:
        table = pd.read_parquet(shard.parquet, columns=["image_id", "content_hash"])
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
        table = pd.read_parquet(shard.parquet, columns=["image_id", "content_hash", "row"])
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
    atomic_save(key_dir / f"{stem}.npy", lambda tmp: np.save(tmp, features))
    table = pd.DataFrame(
        {
            "image_id": batch["image_id"].astype(str),
            "content_hash": batch["content_hash"].astype(str),
            "row": np.arange(len(batch), dtype=np.int64),
        }
    )
    # Written last: its presence commits the shard.
    atomic_save(key_dir / f"{stem}.parquet", lambda tmp: table.to_parquet(tmp, index=False))


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
