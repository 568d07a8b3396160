"""Checkpoint plumbing shared by the training loop and the checkpoint dataset.

Checkpoints are plain dicts of tensors, numbers, strings, lists and dicts, so that
``torch.load(weights_only=True)`` can read them: loading never executes pickled code.
RNG states are stored in that same safe form.
"""

from __future__ import annotations

import logging
import pickle
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dqe_cir_pipeline.io_utils import atomic_save

logger = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint was made with another backbone or configuration than requested."""


class CheckpointCorruptError(ValueError):
    """A checkpoint file cannot be read back: truncated, overwritten, or not a checkpoint."""


#: What ``torch.load`` raises on a damaged file: a truncated zip ("failed finding
#: central directory", a ``RuntimeError``), a short legacy pickle (``EOFError``,
#: ``UnpicklingError``), bytes that are not a checkpoint (``ValueError``) or I/O errors.
UNREADABLE_ERRORS = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError)


def atomic_torch_save(path: str | Path, obj: dict[str, Any]) -> None:
    """``torch.save`` through :func:`~dqe_cir_pipeline.io_utils.atomic_save`.

    The checkpoint is written to a temporary file in the same folder, ``fsync``-ed and
    moved over ``path`` with ``os.replace``, so an interrupted write leaves the previous
    file intact. Missing parent folders are created.

    Args:
        path: Destination file.
        obj: The checkpoint dict.
    """
    atomic_save(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) onto the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointCorruptError: The file cannot be read back or holds no dict; the
            message names the file, its size and the loader's error.
    """
    p = Path(path)
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except UNREADABLE_ERRORS as exc:
        raise CheckpointCorruptError(unreadable_message(p, exc)) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointCorruptError(
            f"checkpoint {p} holds a {type(ckpt).__name__}, not a checkpoint dict"
        )
    return ckpt


def unreadable_message(path: Path, exc: BaseException) -> str:
    """``checkpoint <path> (<n> bytes) cannot be read (truncated or corrupted?): <cause>``."""
    try:
        size = f"{path.stat().st_size} bytes"
    except OSError:
        size = "size unknown"
    cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"checkpoint {path} ({size}) cannot be read (truncated or corrupted?): {cause}"


# -- RNG state ------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Captures the Python, numpy (global), torch CPU and CUDA RNG states.

    The states are stored as tensors and Python scalars only, so the dict survives
    ``torch.load(weights_only=True)`` (a raw ``np.random.get_state()`` holds a numpy
    array, which that loader rejects).

    Returns:
        ``{"python": {...}, "numpy": {...}, "torch": ByteTensor, "cuda": [ByteTensor]}``;
        ``"cuda"`` is an empty list without CUDA.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    cuda_states = (
        [state.clone() for state in torch.cuda.get_rng_state_all()]
        if torch.cuda.is_available()
        else []
    )
    return {
        "python": {
            "version": int(py_version),
            # Mersenne Twister words are < 2**32, exact in int64.
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda_states,
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restores RNG states captured by :func:`capture_rng_state`.

    Missing parts are skipped. CUDA states are restored for as many devices as both
    the checkpoint and this machine have; a mismatch is logged.

    Args:
        state: The dict returned by :func:`capture_rng_state` (possibly after a
            save / load round trip).
    """
    if "python" in state:
        py = state["python"]
        words = tuple(int(word) for word in torch.as_tensor(py["state"]).tolist())
        random.setstate((int(py["version"]), words, py["gauss_next"]))
    if "numpy" in state:
        nps = state["numpy"]
        keys = torch.as_tensor(nps["keys"]).numpy().astype(np.uint32)
        np.random.set_state(
            (
                nps["bit_generator"],
                keys,
                int(nps["pos"]),
                int(nps["has_gauss"]),
                float(nps["cached_gaussian"]),
            )
        )
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    cuda_states = list(state.get("cuda") or [])
    if cuda_states:
        if not torch.cuda.is_available():
            logger.warning("Checkpoint has CUDA RNG states but CUDA is unavailable; skipped.")
            return
        count = torch.cuda.device_count()
        if count != len(cuda_states):
            logger.warning(
                "Checkpoint has %d CUDA RNG states, this machine %d devices; restoring %d.",
                len(cuda_states),
                count,
                min(count, len(cuda_states)),
            )
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(torch.as_tensor(cuda_state, dtype=torch.uint8).cpu(), device)


# -- restoring a model ---------------------------------------------------------------
def _plain(value: Any) -> Any:
    """Normalises containers so a YAML list equals a dataclass tuple."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _config_differences(expected: Mapping[str, Any], actual: Any, prefix: str) -> list[str]:
    lines: list[str] = []
    actual_map = actual if isinstance(actual, Mapping) else {}
    for key, want in expected.items():
        name = f"{prefix}.{key}"
        if key not in actual_map:
            lines.append(f"{name}: missing in checkpoint (expected {want!r})")
            continue
        have = actual_map[key]
        if isinstance(want, Mapping) and isinstance(have, Mapping):
            lines.extend(_config_differences(want, have, name))
        elif _plain(want) != _plain(have):
            lines.append(f"{name}: checkpoint has {have!r}, expected {want!r}")
    return lines


def load_trainable_state(
    model: torch.nn.Module,
    ckpt: Mapping[str, Any],
    expected_backbone_key: str,
    expected_config: Mapping[str, Any],
) -> None:
    """Loads ``ckpt["model"]`` into ``model`` after checking that it belongs to it.

    Only the fields given in ``expected_config`` are compared (nested dicts
    recursively); extra fields in the checkpoint's config are ignored, so pass the
    architecture-defining settings.

    Args:
        model: The module to restore, built for ``expected_config``.
        ckpt: A checkpoint dict as saved by :class:`TorchCheckpointDataset`.
        expected_backbone_key: Backbone key the model was built with
            (``ckpt["backbone"]["key"]`` must equal it).
        expected_config: Config fields that must match ``ckpt["config"]``.

    Raises:
        CheckpointMismatchError: Listing every differing field, or when the state
            dict's keys / shapes do not fit the model (``strict=True``).
    """
    problems: list[str] = []
    backbone = ckpt.get("backbone")
    have_key = backbone.get("key") if isinstance(backbone, Mapping) else None
    if have_key != expected_backbone_key:
        problems.append(
            f"backbone.key: checkpoint has {have_key!r}, expected {expected_backbone_key!r}"
        )
    problems.extend(_config_differences(expected_config, ckpt.get("config"), "config"))
    if "model" not in ckpt or not isinstance(ckpt["model"], Mapping):
        problems.append("model: checkpoint has no state dict under 'model'")
    if problems:
        raise CheckpointMismatchError(
            "Checkpoint does not match the model being restored:\n  - " + "\n  - ".join(problems)
        )
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointMismatchError(f"State dict does not fit the model: {exc}") from exc
