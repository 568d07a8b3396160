"""The annotation files a benchmark's reader opens, described once.

A benchmark's layout (``fashioniq.FashionIQLayout``, ``cirr.CIRRLayout``) names every
file its configured splits need and which image files a split file lists. Its reader
opens exactly those files, and the pre-flight check (``preflight.check_data``) looks for
the same ones before a run, so the two cannot disagree about where a file lies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

#: ``AnnotationFile.kind``: a split file (the split's images) or a captions file.
SPLIT, CAPTIONS = "split", "captions"


@dataclass(frozen=True)
class AnnotationFile:
    """One annotation file a run needs: which split / category and what it holds."""

    path: Path
    kind: str  # SPLIT or CAPTIONS
    split: str
    category: str


class AnnotationLayout(Protocol):
    """What a benchmark's reader opens, for the pre-flight check to look at first."""

    def files(self) -> list[AnnotationFile]:
        """Every annotation file the configured splits need, in reading order."""
        ...

    def image_files(self, entries: Any, image_root: Path) -> dict[str, list[Path]]:
        """The candidate files of each image a split file's ``entries`` list (several
        when the extension varies).

        Raises:
            AnnotationError: ``entries`` is not what a split file of this layout holds.
        """
        ...
