"""Image checks: does each listed file exist and decode; its size and content hash.

Bad files become quarantine rows (never dropped silently); :class:`ImageIndex` then says
which image ids a triplet may use and why an unusable one was rejected.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import pandas as pd
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
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


def check_images(
    records: Sequence[ImageRecord],
    dataset: str,
    workers: int | None = None,
    mode: str = "decode",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Check that image files exist and decode; measure and hash them.

    Each distinct path is read and hashed once, however many (category, split)
    memberships list it. Order of the output follows ``records``.

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
    if n_workers == 1 or len(unique_paths) < 64 or mode == "exists":
        checks = [_check_file(p, mode) for p in unique_paths]
    elif mode == "decode":
        checks = _check_files_threaded(unique_paths, n_workers, mode)
    else:
        checks = _check_files_pipelined(unique_paths, n_workers, mode)
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
