"""Importing the helper modules of ``benchmarks/`` (its scripts import siblings by name)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@contextmanager
def on_benchmarks_path() -> Iterator[None]:
    """``benchmarks/`` first on ``sys.path`` while the block runs."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield
    finally:
        sys.path.remove(str(BENCHMARKS))
