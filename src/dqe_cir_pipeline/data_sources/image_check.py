"""Image checks: does each listed file exist and decode; its size and content hash.

Bad files become quarantine rows (never dropped silently); :class:`ImageIndex` then says
which image ids a triplet may use and why an unusable one was rejected. A
:class:`CheckRecord` (active through :func:`recording_checks`) remembers the files found
good and their stamps, so a re-run checks only new or changed files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from dqe_cir_pipeline.data_sources.common import (
    REASON_MISSING_FILE,
    REASON_QUARANTINED_IMAGE,
    REASON_UNDECODABLE,
    REASON_UNKNOWN_IMAGE,
    frame_from_rows,
    quarantine_row,
    reason_code,
)
from dqe_cir_pipeline.data_sources.schema import IMAGE_SCHEMA, QUARANTINE_SCHEMA
from dqe_cir_pipeline.io_utils import atomic_save, set_aside

logger = logging.getLogger(__name__)

#: (image_id, category, split, path) - one image membership to check.
ImageRecord = tuple[str, str, str, str]

#: How thoroughly ``check_images`` looks at a file (``data.image_check``):
#: ``decode`` reads, hashes and decodes every pixel (catches truncated JPEG scans);
#: ``header`` reads, hashes and checks the container (PNG chunk CRCs, JPEG markers)
#: without decoding; ``exists`` only asks whether the file is there (the pre-flight
#: check's quick prediction: no size, no hash).
IMAGE_CHECKS = ("decode", "header", "exists")


@dataclass(frozen=True)
class _ImageCheck:
    """Outcome of checking one file: size and hash, or an error reason."""

    width: int = 0
    height: int = 0
    content_hash: str = ""
    error: str | None = None


def _read_file(path: str) -> tuple[bytes, str] | _ImageCheck:
    """Read a whole file and sha256 it: ``(bytes, hex digest)`` or an error check.

    Runs in the reader threads: ``read`` and hashlib release the GIL.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return _ImageCheck(error=f"{REASON_MISSING_FILE}: {path} does not exist")
    except IsADirectoryError:
        return _ImageCheck(error=f"{REASON_MISSING_FILE}: {path} is a directory")
    except OSError as exc:
        return _ImageCheck(error=f"{REASON_MISSING_FILE}: cannot read {path}: {exc}")
    if not data:
        return _ImageCheck(error=f"{REASON_UNDECODABLE}: {path} is empty (0 bytes)")
    return data, hashlib.sha256(data).hexdigest()


def _parse_image(path: str, data: bytes, digest: str, mode: str) -> _ImageCheck:
    """Validate bytes already read as an image; take the size from its header.

    ``header``: ``Image.verify`` checks the container (PNG chunk CRCs, JPEG markers)
    without decoding pixels, so a JPEG whose scan data is cut short passes.
    ``decode``: every pixel is decoded (``Image.load``), which fails on a truncated
    JPEG or PNG ("image file is truncated").
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if mode == "decode":
                img.load()
            else:
                img.verify()
    except UnidentifiedImageError:  # PIL's message names the BytesIO's address: not repeatable
        return _ImageCheck(error=f"{REASON_UNDECODABLE}: {path}: cannot identify image file")
    except (OSError, SyntaxError, ValueError) as exc:
        cause = str(exc) or type(exc).__name__
        return _ImageCheck(error=f"{REASON_UNDECODABLE}: {path}: {cause}")
    except Image.DecompressionBombError as exc:  # pragma: no cover - needs a huge file
        return _ImageCheck(error=f"{REASON_UNDECODABLE}: {path}: {exc}")
    if width <= 0 or height <= 0:
        return _ImageCheck(error=f"{REASON_UNDECODABLE}: {path}: size {width}x{height}")
    return _ImageCheck(width=width, height=height, content_hash=digest)


def _check_file(path: str, mode: str) -> _ImageCheck:
    """Read, hash and validate one file (``exists``: only whether it is a file)."""
    if mode == "exists":
        if os.path.isfile(path):
            return _ImageCheck()
        return _ImageCheck(error=f"{REASON_MISSING_FILE}: {path} does not exist")
    read = _read_file(path)
    if isinstance(read, _ImageCheck):
        return read
    return _parse_image(path, *read, mode)


def _check_files_threaded(paths: Sequence[str], workers: int, mode: str) -> list[_ImageCheck]:
    """Read, hash and decode every file in a thread pool, in order.

    Decoding (libjpeg, zlib) releases the GIL, so a full decode scales over threads.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgcheck") as ex:
        return list(ex.map(lambda p: _check_file(p, mode), paths))


def _check_files_pipelined(paths: Sequence[str], workers: int, mode: str) -> list[_ImageCheck]:
    """Read + hash in a thread pool, parse headers in the calling thread, in order.

    PIL's header parsing holds the GIL (threads made it slower), so only reading and
    hashing are threaded; at most ``workers * 32`` files are in flight.
    """
    out: list[_ImageCheck] = []
    window: deque[tuple[str, Future[tuple[bytes, str] | _ImageCheck]]] = deque()
    pending = iter(paths)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgread") as ex:
        for p in islice(pending, workers * 32):
            window.append((p, ex.submit(_read_file, p)))
        while window:
            path, fut = window.popleft()
            nxt = next(pending, None)
            if nxt is not None:
                window.append((nxt, ex.submit(_read_file, nxt)))
            read = fut.result()
            out.append(read if isinstance(read, _ImageCheck) else _parse_image(path, *read, mode))
    return out


def default_workers() -> int:
    """Reader threads for image checks: I/O bound, so a few per core (at most 16)."""
    return min(16, 4 * (os.cpu_count() or 1))


def _check_paths(paths: Sequence[str], workers: int, mode: str) -> list[_ImageCheck]:
    """Check each path, in order: serially, or threaded as ``mode`` suits."""
    if workers == 1 or len(paths) < 64 or mode == "exists":
        return [_check_file(p, mode) for p in paths]
    if mode == "decode":
        return _check_files_threaded(paths, workers, mode)
    return _check_files_pipelined(paths, workers, mode)


def check_images(
    records: Sequence[ImageRecord],
    dataset: str,
    workers: int | None = None,
    mode: str = "decode",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check that image files exist and decode; measure and hash them.

    Each distinct path is read and hashed once, however many (category, split)
    memberships list it. Order of the output follows ``records``. Inside
    :func:`recording_checks`, files the active record found good under ``mode`` and
    unchanged since are not read again (``exists`` never uses a record).

    Args:
        records: ``(image_id, category, split, path)`` per membership; ``path`` should
            be absolute.
        dataset: Value for the ``dataset`` column.
        workers: Threads; defaults to :func:`default_workers`; 1 = serial.
        mode: One of :data:`IMAGE_CHECKS`: ``decode`` (every pixel, in ``workers``
            threads), ``header`` (the container only: reads in threads, parses on
            one) or ``exists`` (no read: width, height and hash are left empty).

    Returns:
        ``(images, quarantine)``: an IMAGE_SCHEMA frame of the good memberships and a
        QUARANTINE_SCHEMA frame (``kind="image"``, ``source_file`` = the image path,
        ``record`` = the image id) with one row per bad membership.

    Raises:
        ValueError: ``mode`` is not one of :data:`IMAGE_CHECKS`.
    """
    if mode not in IMAGE_CHECKS:
        raise ValueError(f"image check must be one of {IMAGE_CHECKS}, got {mode!r}")
    unique_paths = list(dict.fromkeys(r[3] for r in records))
    n_workers = max(1, workers or default_workers())
    record = _ACTIVE_RECORD.get()
    if record is not None and record.mode == mode:
        checks = record.check(unique_paths, lambda todo: _check_paths(todo, n_workers, mode))
    else:
        checks = _check_paths(unique_paths, n_workers, mode)
    by_path = dict(zip(unique_paths, checks, strict=True))

    good: list[dict] = []
    bad: list[dict] = []
    for image_id, category, split, path in records:
        chk = by_path[path]
        if chk.error is not None:
            bad.append(
                quarantine_row(
                    dataset, "image", path, image_id, chk.error, split=split, category=category
                )
            )
        else:
            good.append(
                {
                    "image_id": image_id,
                    "dataset": dataset,
                    "category": category,
                    "split": split,
                    "path": path,
                    "width": chk.width,
                    "height": chk.height,
                    "content_hash": chk.content_hash,
                }
            )
    if bad:
        logger.warning(
            "%s: %d of %d image memberships quarantined (%s)",
            dataset,
            len(bad),
            len(records),
            dict(Counter(reason_code(r["reason"]) for r in bad)),
        )
    return frame_from_rows(good, IMAGE_SCHEMA), frame_from_rows(bad, QUARANTINE_SCHEMA)


# ------------------------------------------------------------------- reuse record

#: A file changed this recently (before its check began) is not recorded: a rewrite
#: within the file system's timestamp granularity (up to 2 s on FAT and some network
#: shares) could leave its stamp as it was. It is simply checked again next time.
SETTLE_NS = 2_000_000_000


class FileStamp(NamedTuple):
    """What ``os.stat`` says of a file; rewriting the file changes at least one field.

    ``ctime_ns`` and ``inode`` catch a rewrite that keeps the size and restores the
    modification time (``cp -p``, ``rsync -t``, ``touch -r``): only the kernel sets them.
    """

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str) -> FileStamp | None:
        """The file's stamp, or ``None`` when it cannot be stat-ed (then it is checked)."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    def settled(self, now_ns: int) -> bool:
        """Last changed at least :data:`SETTLE_NS` before ``now_ns``."""
        return max(self.mtime_ns, self.ctime_ns) < now_ns - SETTLE_NS


#: ``path -> (stamp when checked, outcome)`` of the files found good.
RecordEntries = dict[str, tuple[FileStamp, _ImageCheck]]


class CheckRecord:
    """The files a check of one mode found good, with their stamps then.

    ``previous`` is what an earlier run recorded. Each :meth:`check` reuses the outcome
    of a file whose stamp is unchanged, checks the others and records the good ones.
    Only good outcomes are recorded: a bad file is checked again every time, so the
    quarantine is the one a full check gives. :attr:`entries` is what this run found good.
    """

    def __init__(self, mode: str, previous: RecordEntries | None = None) -> None:
        """Start a run's record for ``mode`` (``decode`` or ``header``) from ``previous``."""
        if mode not in IMAGE_CHECKS[:2]:
            raise ValueError(f"a check record is for one of {IMAGE_CHECKS[:2]}, got {mode!r}")
        self.mode = mode
        self._previous = dict(previous or {})
        self.entries: RecordEntries = {}
        self.reused = 0
        self.checked = 0

    def check(
        self, paths: Sequence[str], run: Callable[[list[str]], list[_ImageCheck]]
    ) -> list[_ImageCheck]:
        """Outcomes for ``paths`` in order: recorded ones reused, the rest from ``run``."""
        started = time.time_ns()
        # stat before reading: a change during the check shows as a new stamp next time
        stamps = [FileStamp.of(p) for p in paths]
        out: list[_ImageCheck | None] = []
        for path, stamp in zip(paths, stamps, strict=True):
            known = self.entries.get(path) or self._previous.get(path)
            out.append(known[1] if stamp is not None and known and known[0] == stamp else None)
        todo = [i for i, chk in enumerate(out) if chk is None]
        for i, chk in zip(todo, run([paths[i] for i in todo]), strict=True):
            out[i] = chk
        self.reused += len(paths) - len(todo)
        self.checked += len(todo)
        checks = [chk for chk in out if chk is not None]
        for path, stamp, chk in zip(paths, stamps, checks, strict=True):
            if stamp is not None and chk.error is None and stamp.settled(started):
                self.entries[path] = (stamp, chk)
        return checks

    @property
    def changed(self) -> bool:
        """This run's entries differ from what the record held when read."""
        return self.entries != self._previous

    def stats(self) -> dict[str, int | str]:
        """Files reused and checked by this run's passes, and how many it recorded."""
        return {
            "mode": self.mode,
            "reused": self.reused,
            "checked": self.checked,
            "recorded": len(self.entries),
        }


@contextmanager
def recording_checks(record: CheckRecord | None) -> Iterator[None]:
    """Make ``record`` the one :func:`check_images` uses in this block (``None``: none).

    A context rather than an argument, so every reader (built in or registered) gets it
    without passing it down; the lookups run on the calling thread.
    """
    token = _ACTIVE_RECORD.set(record)
    try:
        yield
    finally:
        _ACTIVE_RECORD.reset(token)


_ACTIVE_RECORD: ContextVar[CheckRecord | None] = ContextVar("image_check_record", default=None)

#: Columns of the record file after ``path`` (stamp, then outcome).
_STAMP_COLUMNS = list(FileStamp._fields)
_RECORD_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
        ("ctime_ns", pa.int64()),
        ("inode", pa.uint64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("content_hash", pa.string()),
    ]
)
#: Bumped when the file's layout or what a recorded outcome means changes.
RECORD_FORMAT = 1
_META_KEY = b"dqe_cir.check_record"


class CheckRecordFile:
    """Where a :class:`CheckRecord` is kept between runs: a Parquet table.

    The check mode and :data:`RECORD_FORMAT` are in the file's metadata; a record of
    another mode or format is not used (every file is checked). Written atomically.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """A handle on ``path`` (it may not exist yet)."""
        self.path = Path(path)

    def read(self, mode: str) -> CheckRecord:
        """The stored record as the start of a ``mode`` run (empty when unusable)."""
        if not self.path.exists():
            return CheckRecord(mode)
        try:
            table = pq.read_table(self.path)
            meta = json.loads((table.schema.metadata or {})[_META_KEY])
            stored_mode, stored_format = meta["mode"], meta["format"]
            table = table.select(_RECORD_SCHEMA.names).cast(_RECORD_SCHEMA)
        except (OSError, pa.ArrowException, KeyError, TypeError, ValueError) as exc:
            moved = set_aside(self.path)
            logger.warning("image check record unreadable (%s), set aside as %s", exc, moved)
            return CheckRecord(mode)
        if (stored_mode, stored_format) != (mode, RECORD_FORMAT):
            logger.info(
                "image check record is for %s checks (format %s): every file is checked %s",
                stored_mode,
                stored_format,
                mode,
            )
            return CheckRecord(mode)
        cols = table.to_pydict()
        stamps = map(FileStamp, *(cols[c] for c in _STAMP_COLUMNS))
        checks = map(_ImageCheck, cols["width"], cols["height"], cols["content_hash"])
        return CheckRecord(
            mode, dict(zip(cols["path"], zip(stamps, checks, strict=True), strict=True))
        )

    def write(self, record: CheckRecord) -> None:
        """Replace the stored record with ``record``'s entries (unless it holds them)."""
        if not record.changed:
            return
        rows = [
            (path, *stamp, chk.width, chk.height, chk.content_hash)
            for path, (stamp, chk) in sorted(record.entries.items())
        ]
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in _RECORD_SCHEMA]
        meta = {"mode": record.mode, "format": RECORD_FORMAT}
        table = pa.Table.from_arrays(
            [pa.array(list(c), type=f.type) for c, f in zip(columns, _RECORD_SCHEMA, strict=True)],
            schema=_RECORD_SCHEMA.with_metadata({_META_KEY: json.dumps(meta).encode()}),
        )
        atomic_save(self.path, lambda tmp: pq.write_table(table, tmp))


class ImageIndex:
    """Which image ids a triplet of a given (category, split) may refer to.

    Built from the ids the split files list and the quarantine rows of the image
    check; :meth:`problem` explains why an id is unusable.
    """

    def __init__(
        self,
        listed: Mapping[tuple[str, str], Iterable[str]],
        images: pd.DataFrame,
        image_quarantine: pd.DataFrame,
    ) -> None:
        """Index listed ids and the reason each quarantined id was rejected.

        Args:
            listed: ``(category, split) -> ids`` from the split files.
            images: The accepted IMAGE_SCHEMA frame.
            image_quarantine: Quarantine rows of kind ``"image"`` (``record`` = id).
        """
        self._listed = {k: set(v) for k, v in listed.items()}
        self._usable: dict[tuple[str, str], set[str]] = {}
        for (cat, split), ids in images.groupby(["category", "split"])["image_id"]:
            self._usable[(cat, split)] = set(ids)
        self._why: dict[str, str] = {}
        for rec, reason in zip(image_quarantine["record"], image_quarantine["reason"], strict=True):
            self._why.setdefault(rec, reason)

    def problem(self, image_id: str, category: str, split: str, role: str) -> str | None:
        """Return a quarantine reason if ``image_id`` is unusable, else ``None``.

        Args:
            image_id: The referenced id.
            category: The triplet's category.
            split: The triplet's split.
            role: What the id is in the triplet (``"reference"``, ``"target"``, ...),
                used in the message.
        """
        key = (category, split)
        if image_id in self._usable.get(key, ()):
            return None
        if image_id not in self._listed.get(key, ()):
            return (
                f"{REASON_UNKNOWN_IMAGE}: {role} {image_id!r} is not in the "
                f"{category}/{split} image split"
            )
        why = self._why.get(image_id, "rejected by the image check")
        return f"{REASON_QUARANTINED_IMAGE}: {role} {image_id!r} ({why})"
