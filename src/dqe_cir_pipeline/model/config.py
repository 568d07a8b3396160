"""``config_block``: parameter blocks as validating dataclasses (unknown keys refused by name).

Kedro instantiates them from their ``conf/`` YAML blocks; their defaults equal ``conf/base``.
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
    """``cls(**values)`` for a plain dataclass outside the model library, refusing unknown keys."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {where} keys {unknown}; known: {sorted(known)}")
    return cls(**values)


@config_block
class RuntimeConfig:
    """Where compute runs (``runtime``).

    ``device``: ``auto | cpu | cuda | cuda:N``; ``amp_dtype`` applies on CUDA (CPU runs fp32).
    """

    device: str = "auto"
    amp_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if self.amp_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"amp_dtype must be bfloat16|float16|float32, got {self.amp_dtype!r}")
