"""Small, dependency-free file helpers: atomic writes, short content hashes, folder locks.

Every persisted artifact goes through :func:`atomic_save` (temporary file in the same
directory, fsync, ``os.replace``), so a reader or a crashed run sees the old file or the
complete new one, never a torn file.
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

#: In :func:`atomic_save`'s temporary names; a folder's owner may delete
#: ``.*<marker>*`` leftovers (a ``SIGKILL`` gives no chance to clean up).
TEMP_MARKER = ".tmp-"

#: Hex characters kept by :func:`short_hash` (64 bits of SHA-256).
SHORT_HASH_CHARS = 16


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden temporary path next to ``path`` (64 random bits), ending in its suffix.

    The suffix stays last because some writers append a missing one (``numpy.save``: ``.npy``).
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
    """Write ``path`` atomically: ``writer`` creates the file at the temporary path it is given.

    The file is fsync-ed and renamed over ``path``; if ``writer`` raises or the process dies,
    ``path`` is untouched. ``fsync=False`` trades durability on power loss (not atomicity)
    for speed. An OSError is re-raised naming ``path`` (same class and errno).
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
    """Atomically replace ``path`` with ``data``."""
    return atomic_save(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = True
) -> Path:
    """Atomically replace ``path`` with ``obj`` as JSON (paths, numpy, dataclasses converted)."""
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
    """Canonical JSON (sorted keys, no whitespace, UTF-8): equal for equal inputs.

    Tuples become lists, paths POSIX strings, sets sorted lists, numpy values Python values,
    dataclasses dicts; NaN / inf are refused (no JSON spelling).
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
    """First :data:`SHORT_HASH_CHARS` hex characters of the SHA-256 of ``data`` (text: UTF-8).

    The one place a digest is truncated into a key; callers choose the serialisation.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:SHORT_HASH_CHARS]


def stable_hash(obj: Any) -> str:
    """Short hash of :func:`canonical_json` of ``obj``: any changed setting gives a new key."""
    return short_hash(canonical_json(obj))


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's run lock."""


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.run.lock`` recording its holder (PID, command, start).

    The kernel releases it however the holder exits (``kill -9`` included), so a dead
    process never blocks a run; a refused run names the holder.
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

    Kept under a name no reader looks for, so its writer can produce a fresh one.
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
    """Hold an exclusive ``flock`` on ``path`` for the block, waiting for any other holder.

    Serialises one-time set-up of concurrent processes (e.g. a fresh MLflow sqlite store).
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
