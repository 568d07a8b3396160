"""The one place where a device string and an autocast context are decided."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto | cpu | cuda | cuda:N`` -> device; missing CUDA is an error, never a quiet CPU run."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available")
    return resolved


def autocast(device: torch.device, amp_dtype: str | None) -> AbstractContextManager[object]:
    """bf16/fp16 autocast on CUDA; a no-op on CPU (fp32 is both faster and exact there)."""
    if device.type != "cuda" or not amp_dtype or amp_dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=getattr(torch, amp_dtype))
