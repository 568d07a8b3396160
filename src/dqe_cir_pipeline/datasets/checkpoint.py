"""Training checkpoints as plain dicts: a safe, atomic, versioned Kedro dataset.

A checkpoint holds only what ``torch.load(weights_only=True)`` rebuilds: tensors, Python
scalars / strings / bytes, None, torch Size / dtype / device and containers of those
(:func:`capture_rng_state` stores RNG states that way).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
import torch
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    get_filepath_str,
    get_protocol_and_path,
)

from dqe_cir_pipeline.io_utils import atomic_save
from dqe_cir_pipeline.model.state import (  # re-exported: the dataset's public helpers
    UNREADABLE_ERRORS,
    CheckpointMismatchError,
    capture_rng_state,
    load_trainable_state,
    restore_rng_state,
    unreadable_message,
)

__all__ = [
    "CheckpointMismatchError",
    "TorchCheckpointDataset",
    "capture_rng_state",
    "load_trainable_state",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)

_SAFE_LEAVES: tuple[type, ...] = (
    torch.Tensor,
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    torch.Size,
    torch.dtype,
    torch.device,
)


def _find_unsafe(obj: Any, path: str = "checkpoint") -> str | None:
    """Where the first value ``weights_only`` loading would reject sits, to explain a failed save.

    The authoritative check is a real ``weights_only`` load of the written file.
    """
    if isinstance(obj, _SAFE_LEAVES):
        return None
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            found = _find_unsafe(value, f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(obj, (list, tuple, set, frozenset)):
        for position, value in enumerate(obj):
            found = _find_unsafe(value, f"{path}[{position}]")
            if found:
                return found
        return None
    return f"{path} ({type(obj).__module__}.{type(obj).__qualname__})"


def _verify_weights_only(path: Path, data: Mapping[str, Any]) -> None:
    """Loads a just-written file the way ``load`` will, so bad content never lands."""
    try:
        # mmap: the tensor bytes are not read, only the pickle program is checked.
        torch.load(path, weights_only=True, map_location="cpu", mmap=True)
    except Exception as exc:
        culprit = _find_unsafe(data)
        hint = f" The first offending value is {culprit}." if culprit else ""
        raise DatasetError(
            "This checkpoint could not be re-loaded with torch.load(weights_only=True), "
            f"so it was not written.{hint} Store plain data instead (tensors, numbers, "
            "strings, lists, dicts); use capture_rng_state() for RNG states. "
            f"Loader error: {str(exc).splitlines()[0]}"
        ) from exc


class TorchCheckpointDataset(AbstractVersionedDataset[dict[str, Any], dict[str, Any]]):
    """Training checkpoints (plain dicts) saved atomically, loaded with ``weights_only=True``.

    A save is re-loaded once (memory-mapped) before it replaces the destination, so a crash
    or an unloadable dict never replaces a good checkpoint; other fsspec file systems get
    the verified file in one upload.

    Example catalog entry:

    .. code-block:: yaml

        dqe_checkpoint:
          type: dqe_cir_pipeline.datasets.checkpoint.TorchCheckpointDataset
          filepath: data/06_models/dqe_checkpoint.pt
          versioned: true

    Security: ``weights_only=True`` cannot be switched off through ``load_args``; it refuses
    any global outside an allow-list of plain types, so a crafted file cannot run code.
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {"map_location": "cpu"}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {}

    def __init__(  # noqa: PLR0913
        self,
        *,
        filepath: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """The kedro-datasets arguments; ``filepath`` may be any fsspec URL.

        ``load_args`` go to ``torch.load`` (default ``map_location: cpu``; ``mmap: true`` avoids
        reading large tensors eagerly); a ``weights_only`` other than True raises DatasetError.
        """
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        if self._load_args.pop("weights_only", True) is not True:
            raise DatasetError(
                "TorchCheckpointDataset always loads with weights_only=True; unpickling "
                "arbitrary objects would let a checkpoint file execute code."
            )
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        _fs_args = deepcopy(fs_args) or {}
        protocol, path = get_protocol_and_path(str(filepath), version)
        if protocol == "file":
            _fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(deepcopy(credentials) or {}), **_fs_args)
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path),
            version=version,
            exists_function=self._fs.exists,
            glob_function=self._fs.glob,
        )

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "version": self._version,
        }

    def load(self) -> dict[str, Any]:
        """The checkpoint dict; DatasetError names a missing, truncated or disallowed file."""
        load_path = get_filepath_str(self._get_load_path(), self._protocol)
        try:
            if self._protocol == "file":
                if not Path(load_path).is_file():
                    raise DatasetError(f"Checkpoint file {load_path} does not exist.")
                # A path (not a file object) lets torch memory-map when mmap=True.
                return torch.load(load_path, weights_only=True, **self._load_args)
            with self._fs.open(load_path, mode="rb") as handle:
                return torch.load(handle, weights_only=True, **self._load_args)
        except DatasetError:
            raise
        except UNREADABLE_ERRORS as exc:
            raise DatasetError(
                unreadable_message(Path(load_path), exc)
                + ". Re-run training to write it again (kedro run --pipelines training)."
            ) from exc

    def save(self, data: dict[str, Any]) -> None:
        """Atomically write the checkpoint dict.

        DatasetError, with nothing written, for a non-mapping or a dict that would not load back.
        """
        if not isinstance(data, Mapping):
            raise DatasetError(
                f"TorchCheckpointDataset saves dicts, got {type(data).__name__}; save "
                "{'model': model.state_dict(), ...} rather than the module."
            )
        save_path = get_filepath_str(self._get_save_path(), self._protocol)

        def write(tmp: Path) -> None:
            torch.save(dict(data), tmp, **self._save_args)
            _verify_weights_only(tmp, data)

        if self._protocol == "file":
            atomic_save(save_path, write)
        else:
            with tempfile.TemporaryDirectory() as tmp_dir:
                local = Path(tmp_dir) / "checkpoint.pt"
                write(local)
                self._fs.put_file(str(local), save_path)
        self._invalidate_cache()
        logger.info("Saved checkpoint to %s", save_path)

    def _exists(self) -> bool:
        try:
            load_path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return bool(self._fs.exists(load_path))

    def _release(self) -> None:
        super()._release()
        self._invalidate_cache()

    def _invalidate_cache(self) -> None:
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))
