"""Small, dependency-free file helpers: atomic writes and short content hashes.

Every artifact this project persists (checkpoints, feature-cache shards, markers) is
written through :func:`atomic_save`: the payload goes to a temporary file in the
*same directory* as the destination, is flushed and ``fsync``-ed, and is then moved
into place with :func:`os.replace`. On POSIX (and NTFS) a rename within one file
system is atomic, so a reader - or a run that crashed half way - sees either the old
file or the complete new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePath
from typing import Any

logger = logging.getLogger(__name__)

#: Marker inside the names of temporary files created by :func:`atomic_save`.
#: Writers that own a directory may delete leftovers matching ``.*<marker>*``
#: (e.g. after a ``SIGKILL`` which gives no chance to clean up).
TEMP_MARKER = ".tmp-"

#: Hex characters kept by :func:`short_hash` (64 bits of SHA-256).
SHORT_HASH_CHARS = 16


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """Returns a fresh, hidden temporary path next to ``path``.

    The temporary name keeps ``path``'s suffix at the end (``.x.npy`` ->
    ``..x.npy.tmp-<hex>.npy``) because some writers append a suffix when it is
    missing (``numpy.save`` adds ``.npy``), which would otherwise write to a name the
    caller never renames.

    Args:
        path: The final destination.

    Returns:
        A path in the same directory that does not exist yet (with overwhelming
        probability: 64 random bits).
    """
    dest = Path(path)
    return dest.with_name(f".{dest.name}{TEMP_MARKER}{secrets.token_hex(8)}{dest.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so the rename itself is durable."""
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. unusual file systems
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_save(
    path: str | os.PathLike[str], writer: Callable[[Path], None], *, fsync: bool = True
) -> Path:
    """Writes a file atomically through a caller-supplied writer.

    ``writer`` receives a temporary path in the destination's directory (it keeps the
    destination's suffix) and must create the file there. The file is then
    ``fsync``-ed and renamed over ``path`` with :func:`os.replace`. If ``writer``
    raises (or the process dies), ``path`` is untouched; the temporary file is
    removed on a Python exception.

    Args:
        path: Destination file. Missing parent directories are created.
        writer: Callable that writes the complete payload to the path it is given.
        fsync: Whether to flush the data and the directory entry to disk before
            returning. Turning it off trades durability on power loss (not
            atomicity) for speed.

    Returns:
        The destination as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: If ``writer`` returned without creating the file.
        OSError: A write failed (disk full, permissions, ...): the same error class and
            errno, with a message that names ``path`` (the library's own message, e.g.
            numpy's "requested and written" byte counts, does not).
        Exception: Whatever else ``writer`` raised, after cleaning up.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(dest)
    try:
        writer(tmp)
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_save: writer did not create {tmp} for {dest}")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, dest)
    except OSError as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if str(dest) in str(err) or str(tmp) in str(err):
            raise
        message = f"writing {dest} failed: {err.strerror or err}"
        raise (type(err)(err.errno, message) if err.errno else type(err)(message)) from err
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if fsync:
        _fsync_dir(dest.parent)
    return dest


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replaces ``path`` with ``data``.

    Args:
        path: Destination file.
        data: Complete file content.

    Returns:
        The destination path.
    """
    return atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically replaces ``path`` with ``text``.

    Args:
        path: Destination file.
        text: Complete file content.
        encoding: Text encoding.

    Returns:
        The destination path.
    """
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = True
) -> Path:
    """Atomically replaces ``path`` with ``obj`` serialised as JSON.

    Args:
        path: Destination file.
        obj: JSON-serialisable object (``Path``, numpy scalars/arrays and
            dataclasses are converted, see :func:`stable_hash`).
        indent: JSON indentation; ``None`` for a single line.
        sort_keys: Whether to sort object keys (stable diffs).

    Returns:
        The destination path.
    """
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=_json_default)
    return atomic_write_text(path, text + "\n")


def _json_default(obj: Any) -> Any:
    """Converts the few non-JSON types that appear in configs to JSON values."""
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=lambda item: json.dumps(item, sort_keys=True, default=str))
    # numpy scalars and arrays, without importing numpy here.
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return obj.tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def canonical_json(obj: Any) -> str:
    """Serialises ``obj`` to canonical JSON (sorted keys, no whitespace, UTF-8).

    Tuples become lists, ``Path`` objects POSIX strings, sets sorted lists, numpy
    values Python values, dataclasses dicts. ``NaN`` / ``inf`` are rejected because
    they have no JSON spelling.

    Args:
        obj: The object to serialise.

    Returns:
        A string that is equal for equal inputs regardless of dict key order.
    """
    if isinstance(obj, Mapping):
        obj = dict(obj)
    return json.dumps(
        obj,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )


def short_hash(data: str | bytes) -> str:
    """Returns the first :data:`SHORT_HASH_CHARS` hex characters of the SHA-256 of ``data``.

    The one place where the project truncates a digest into a key (cache keys, backbone
    keys). Callers choose the serialisation; :func:`stable_hash` uses
    :func:`canonical_json`.

    Args:
        data: Text (hashed as UTF-8) or bytes.

    Returns:
        16 lowercase hex characters (64 bits).
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:SHORT_HASH_CHARS]


def stable_hash(obj: Any) -> str:
    """Returns a short, order-independent content hash of a JSON-like object.

    Used to derive cache keys from settings (backbone key + preprocessing), so that
    a change of any setting yields a new key.

    Args:
        obj: JSON-like object; see :func:`canonical_json` for accepted types.

    Returns:
        The first 16 hex characters (64 bits) of the SHA-256 of the canonical JSON.
    """
    return short_hash(canonical_json(obj))


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's run lock."""


class FolderLock:
    """An exclusive lock on a folder, held by one process at a time.

    ``fcntl.flock`` on ``<folder>/.run.lock``: the kernel releases it when the holder
    exits, however it exits (``kill -9`` included), so a lock left by a dead process is
    never in the way. The file records the holder (PID, command, start time) so that a
    refused run can say who holds the folder.

    Args:
        folder: The folder to guard (created when missing).
    """

    FILE = ".run.lock"

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.path = Path(folder) / self.FILE
        self._fd: int | None = None

    def acquire(self, holder: dict[str, Any]) -> None:
        """Take the lock or raise :class:`FolderInUseError` naming the holder."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                other = json.loads(self.path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                other = {}
            raise FolderInUseError(
                f"{self.path.parent} is in use by PID {other.get('pid', '?')} "
                f"({other.get('command', 'unknown command')}, since {other.get('since', '?')}): "
                "wait for it to finish, or give this run its own folder (DQE_DATA_ROOT)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(holder).encode())
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (a no-op when not held)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


#: Marker in the name a damaged file is renamed to by :func:`set_aside`.
CORRUPT_MARKER = ".corrupt-"


def set_aside(path: str | os.PathLike[str]) -> Path:
    """Rename a damaged file out of the way: ``last.pt`` -> ``last.pt.corrupt-<time>``.

    The file is kept (for a post-mortem, or to be deleted by hand) under a name no
    reader looks for, so the writer that owns it can produce a fresh one.

    Args:
        path: The damaged file.

    Returns:
        Its new path, in the same folder.
    """
    src = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = src.with_name(f"{src.name}{CORRUPT_MARKER}{stamp}")
    n = 1
    while dest.exists():
        dest = src.with_name(f"{src.name}{CORRUPT_MARKER}{stamp}-{n}")
        n += 1
    os.replace(src, dest)
    return dest


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created when missing) for the block.

    Waits for another holder to let go; the kernel releases the lock when the holder
    exits, however it exits. Used to serialise one-time set-up shared by concurrent
    processes (e.g. creating the MLflow tables of a fresh sqlite store).

    Args:
        path: The lock file.
    """
    import fcntl

    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock
