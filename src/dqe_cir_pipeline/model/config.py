"""How every configuration block of the project is declared.

Each block (``DQEConfig`` beside the model, ``LossConfig`` beside the losses,
``MiningConfig`` beside the miner, ``OptimConfig`` / ``LoopConfig`` beside the trainer,
...) is a *validating* dataclass: an unknown key or a value of the wrong type is refused
with the key's name, whether it comes from Python or from ``conf/`` through Kedro's
typed parameters (Kedro instantiates a dataclass type hint from the YAML block). The
dataclass defaults equal ``conf/base`` (a test compares them), so there is one source
of defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

T = TypeVar("T")

#: ``extra="forbid"``: a misspelt key is an error, not a silently ignored setting.
_STRICT = ConfigDict(extra="forbid")


def config_block(cls: type[T]) -> type[T]:
    """Class decorator: a dataclass that validates its fields and refuses unknown keys."""
    return dataclass(cls, config=_STRICT)  # type: ignore[return-value]


def build_strict(cls: type[T], values: Mapping[str, Any], where: str) -> T:
    """``cls(**values)`` for a plain dataclass that lives outside the model library (a
    reader's or generator's settings), refusing unknown keys with their parameter path."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    return cls(**values)


@config_block
class RuntimeConfig:
    """Where compute runs (``runtime`` in ``conf/base/parameters.yml``).

    Attributes:
        device: ``auto | cpu | cuda | cuda:N`` (``auto``: CUDA when available).
        amp_dtype: autocast dtype on CUDA (``bfloat16 | float16 | float32``); CPU runs
            fp32 whatever this says.
    """

    device: str = "auto"
    amp_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.amp_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"amp_dtype must be bfloat16|float16|float32, got {self.amp_dtype!r}")
