"""FashionIQ reader: captions + image splits -> canonical images / triplets frames.

Layout (as distributed)::

    <annotation_root>/captions/cap.<category>.<split>.json      # [{candidate, target, captions}]
    <annotation_root>/image_splits/split.<category>.<split>.json  # [image_id, ...]
    <image_root>/<image_id>.jpg   (or .png, depending on the copy)

``target`` is absent from the test split (its targets were never released).

Caption protocol, reproduced from the published code of the FashionIQ baselines this
project follows rather than from their papers' prose summaries:

* each caption is cleaned with Python's ``str.strip(".?, ")`` - the characters
  ``.``, ``?``, ``,`` and space are removed from **both** ends;
* the leading caption of a form goes through ``str.capitalize()``, which upper-cases
  the first character **and lower-cases the rest**; the second caption keeps its case;
* eval text = ``cap(c1) + " and " + c2``; training forms = ``cap(c1) and c2``,
  ``cap(c2) and c1``, ``cap(c1)``, ``cap(c2)``.

[design] Empty captions (empty after cleaning, e.g. ``""`` or ``"."``; 16 in the real
files) and placeholder captions (``na``, ``n/a``, ``N/A``, ``none`` or a bare number: 37
train + val records; ``common.caption_status``) are read as empty text: the published
code would produce ``" and <c2>"`` (or "... and na"); we use the other caption alone
(capitalised) as eval text and as the single training form, and count these records
(log, ``IngestResult.counts``). A record with no usable caption is quarantined, the
reason naming its file, record and captions. The rule: docs/data.md.

[design] Duplicate queries (same category, split, candidate, target and captions) are
quarantined after the first occurrence. The real test split has 12 such records (the
test targets are hidden, so they may have differed); val and train have none.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dqe_cir_pipeline.data_sources.common import (
    CAPTION_OK,
    CAPTION_PLACEHOLDER,
    REASON_BAD_PATH,
    REASON_BAD_VALUE,
    REASON_DUPLICATE,
    REASON_EMPTY_CAPTIONS,
    REASON_MISSING_FIELD,
    REASON_MISSING_FILE,
    AnnotationError,
    IngestResult,
    PhaseTimer,
    assemble_result,
    caption_status,
    concat_frames,
    escaping_target,
    expect_type,
    frame_from_rows,
    load_json,
    quarantine_row,
)
from dqe_cir_pipeline.data_sources.image_check import ImageIndex, ImageRecord, check_images
from dqe_cir_pipeline.data_sources.layout import CAPTIONS, SPLIT, AnnotationFile
from dqe_cir_pipeline.data_sources.lexicon import attribute_flags
from dqe_cir_pipeline.data_sources.schema import QUARANTINE_SCHEMA, edit_type_of

logger = logging.getLogger(__name__)

DATASET = "fashioniq"
_STRIP_CHARS = ".?, "
_SPLIT_HINT = "expected <annotation_root>/image_splits/split.<category>.<split>.json"
_CAPTION_HINT = "expected <annotation_root>/captions/cap.<category>.<split>.json"


@dataclass
class FashionIQConfig:
    """Which parts of FashionIQ to read and how.

    Attributes:
        categories: Garment categories to read.
        splits: Splits to read (captions and image lists).
        image_exts: Extensions tried in order for ``<image_root>/<id>.<ext>``.
        random_train_forms: Emit the four published training caption forms; when False
            the only training form is the eval text.
        unlabelled_splits: Splits whose records carry no ``target``; elsewhere a
            missing target quarantines the record.
        workers: Threads for the image check (``None``: automatic).
        image_check: How the image check looks at each file (``image_check.IMAGE_CHECKS``):
            ``decode`` every pixel (default: a truncated JPEG is quarantined here, not
            found at extraction), ``header`` the container only, ``exists`` no read.
    """

    categories: Sequence[str] = ("dress", "shirt", "toptee")
    splits: Sequence[str] = ("train", "val", "test")
    image_exts: Sequence[str] = ("jpg", "png")
    random_train_forms: bool = True
    unlabelled_splits: Sequence[str] = field(default_factory=lambda: ("test",))
    workers: int | None = None
    image_check: str = "decode"


def clean_caption(text: str) -> str:
    """Strip ``.``, ``?``, ``,`` and spaces from both ends (the published ``strip('.?, ')``)."""
    return text.strip(_STRIP_CHARS)


def caption_text(text: str) -> str:
    """The cleaned caption, or ``""`` for a blank or placeholder one (module docstring)."""
    return clean_caption(text) if caption_status(text) == CAPTION_OK else ""


def eval_caption(c1: str, c2: str) -> str:
    """The FashionIQ evaluation text ``cap(c1) + " and " + c2``.

    Falls back to the other caption alone when one is empty after cleaning or a
    placeholder (see module docstring); returns ``""`` when neither is usable.

    Example:
        >>> eval_caption("is shiny and silver with shorter sleeves.", "fit and flare")
        'Is shiny and silver with shorter sleeves and fit and flare'
        >>> eval_caption("is written Jones New York", "na")
        'Is written jones new york'
    """
    a, b = caption_text(c1), caption_text(c2)
    if a and b:
        return f"{a.capitalize()} and {b}"
    return (a or b).capitalize()


def train_captions(c1: str, c2: str, random_forms: bool = True) -> list[str]:
    """Caption forms a training step samples from.

    Args:
        c1: First raw caption.
        c2: Second raw caption.
        random_forms: The four published forms; otherwise only the eval text.

    Returns:
        ``[c1 and c2, c2 and c1, c1, c2]`` (cleaned, leading caption capitalised) or
        ``[eval text]``; a single form when one caption is empty or a placeholder;
        ``[]`` when neither is usable.
    """
    a, b = caption_text(c1), caption_text(c2)
    if not (a and b):
        only = (a or b).capitalize()
        return [only] if only else []
    if not random_forms:
        return [eval_caption(c1, c2)]
    return [
        f"{a.capitalize()} and {b}",
        f"{b.capitalize()} and {a}",
        a.capitalize(),
        b.capitalize(),
    ]


@dataclass(frozen=True)
class FashionIQLayout:
    """FashionIQ's files for the configured categories and splits (the module docstring's
    layout): the reader opens these, the pre-flight check looks for them."""

    annotation_root: Path
    categories: Sequence[str]
    splits: Sequence[str]
    image_exts: Sequence[str]

    def split_file(self, category: str, split: str) -> Path:
        return self.annotation_root / "image_splits" / f"split.{category}.{split}.json"

    def caption_file(self, category: str, split: str) -> Path:
        return self.annotation_root / "captions" / f"cap.{category}.{split}.json"

    def files(self) -> list[AnnotationFile]:
        """Per category and split: the split file, then the captions file."""
        return [
            AnnotationFile(path, kind, split, category)
            for category in self.categories
            for split in self.splits
            for path, kind in (
                (self.split_file(category, split), SPLIT),
                (self.caption_file(category, split), CAPTIONS),
            )
        ]

    def image_names(self, image_id: str) -> list[str]:
        """File names tried in order for ``image_id`` (one per extension)."""
        return [f"{image_id}.{ext}" for ext in self.image_exts]

    def image_files(self, entries: Any, image_root: Path) -> dict[str, list[Path]]:
        """Candidate files per id of a split file (a list of image ids)."""
        if not isinstance(entries, list):
            raise AnnotationError("expected a list of image ids")
        return {
            str(i): [image_root / name for name in self.image_names(i)]
            for i in entries
            if isinstance(i, str) and i
        }


def layout_of(annotation_root: str | os.PathLike[str], cfg: FashionIQConfig) -> FashionIQLayout:
    """The files ``read_fashioniq`` opens under ``annotation_root`` with ``cfg``."""
    return FashionIQLayout(Path(annotation_root), cfg.categories, cfg.splits, cfg.image_exts)


def _list_image_dir(image_root: Path) -> set[str]:
    """File names directly under ``image_root`` (one ``scandir`` instead of 150k stats)."""
    try:
        with os.scandir(image_root) as it:
            return {e.name for e in it}
    except (FileNotFoundError, NotADirectoryError):
        logger.error("FashionIQ image root %s is not a directory", image_root)
        return set()


def _parse_record(rec: Any, index: int, labelled: bool) -> tuple[dict[str, Any] | None, str | None]:
    """Validate one captions record; return (fields, None) or (None, reason)."""
    if not isinstance(rec, dict):
        return None, f"{REASON_BAD_VALUE}: record is {type(rec).__name__}, not an object"
    required = ["candidate", "captions"] + (["target"] if labelled else [])
    for key in required:
        if key not in rec or rec[key] is None:
            return None, f"{REASON_MISSING_FIELD}: record {index} has no {key!r}"
    candidate, captions = rec["candidate"], rec["captions"]
    target = rec.get("target") if labelled else None
    if not isinstance(candidate, str) or not candidate:
        return None, f"{REASON_BAD_VALUE}: 'candidate' is {candidate!r}"
    if labelled and (not isinstance(target, str) or not target):
        return None, f"{REASON_BAD_VALUE}: 'target' is {target!r}"
    if (
        not isinstance(captions, list)
        or len(captions) != 2
        or not all(isinstance(c, str) for c in captions)
    ):
        return None, f"{REASON_BAD_VALUE}: 'captions' must be 2 strings, got {captions!r}"
    return {"candidate": candidate, "target": target, "captions": captions}, None


def _match_image_files(
    ids: list[Any],
    path: Path,
    cat: str,
    split: str,
    present: set[str],
    img_root: Path,
    layout: FashionIQLayout,
) -> tuple[list[str], list[ImageRecord], list[dict]]:
    """Find the image file of each id one split file lists.

    Args:
        ids: The split file's entries.
        path: The split file, named in quarantine rows.
        cat: Its category.
        split: Its split.
        present: File names directly under ``img_root``.
        img_root: The absolute image folder.
        layout: The file names tried per id.

    Returns:
        ``(ids, records, quarantine)``: the valid ids listed, one
        ``(id, category, split, path)`` record per id with an image file, and image
        quarantine rows for bad entries and ids without a file.
    """
    good_ids: list[str] = []
    records: list[ImageRecord] = []
    quarantine: list[dict] = []
    for i, image_id in enumerate(ids):
        if not isinstance(image_id, str) or not image_id:
            quarantine.append(
                quarantine_row(
                    DATASET,
                    "image",
                    str(path),
                    str(i),
                    f"{REASON_BAD_VALUE}: entry {i} is {image_id!r}, not an image id",
                    split=split,
                    category=cat,
                )
            )
            continue
        good_ids.append(image_id)
        names = layout.image_names(image_id)
        name = next((n for n in names if n in present), None)
        if name is None:
            tried = ", ".join(names)
            quarantine.append(
                quarantine_row(
                    DATASET,
                    "image",
                    str(img_root / names[0]),
                    image_id,
                    f"{REASON_MISSING_FILE}: none of {tried} exists in {img_root}",
                    split=split,
                    category=cat,
                )
            )
            continue
        target = escaping_target(img_root, img_root / name)
        if target is not None:
            quarantine.append(
                quarantine_row(
                    DATASET,
                    "image",
                    str(img_root / name),
                    image_id,
                    f"{REASON_BAD_PATH}: a symlink to {target}, outside the image root {img_root}",
                    split=split,
                    category=cat,
                )
            )
            continue
        records.append((image_id, cat, split, str(img_root / name)))
    return good_ids, records, quarantine


def _read_image_splits(
    layout: FashionIQLayout, img_root: Path, timer: PhaseTimer
) -> tuple[dict[tuple[str, str], list[str]], list[ImageRecord], list[dict]]:
    """Read every (category, split) file: listed ids, images to check, bad entries.

    Raises:
        AnnotationError: A split file is missing, not valid JSON or not a list.
    """
    with timer("listdir_s"):
        present = _list_image_dir(img_root)
    listed: dict[tuple[str, str], list[str]] = {}
    records: list[ImageRecord] = []
    quarantine: list[dict] = []
    for cat in layout.categories:
        for split in layout.splits:
            path = layout.split_file(cat, split)
            with timer("json_s"):
                ids = load_json(path, hint=_SPLIT_HINT)
            expect_type(ids, list, path, "a list of image ids")
            good, found, rejected = _match_image_files(
                ids, path, cat, split, present, img_root, layout
            )
            listed[(cat, split)] = good
            records += found
            quarantine += rejected
    return listed, records, quarantine


@dataclass(frozen=True)
class _CaptionFile:
    """One captions file being read: where it is and which part of FashionIQ it holds."""

    path: Path
    category: str
    split: str
    labelled: bool

    def query_id(self, index_in_file: int) -> str:
        return f"{self.category}-{self.split}-{index_in_file}"


def _read_captions(
    layout: FashionIQLayout, index: ImageIndex, cfg: FashionIQConfig, timer: PhaseTimer
) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Read every captions file into triplet rows and quarantine rows.

    Returns:
        ``(triplets, quarantine, counts)``; ``counts`` has ``one_empty`` (accepted records
        with one caption empty or a placeholder) and ``placeholder`` (accepted records
        with a placeholder caption).

    Raises:
        AnnotationError: A captions file is missing, not valid JSON or not a list.
    """
    triplets: list[dict] = []
    triplet_q: list[dict] = []
    counts = {"one_empty": 0, "placeholder": 0}
    for cat in layout.categories:
        for split in layout.splits:
            source = _CaptionFile(
                layout.caption_file(cat, split), cat, split, split not in cfg.unlabelled_splits
            )
            with timer("json_s"):
                recs = load_json(source.path, hint=_CAPTION_HINT)
            expect_type(recs, list, source.path, "a list of caption records")
            seen: dict[tuple, int] = {}
            for i, rec in enumerate(recs):
                row = _triplet_row(rec, i, source, seen, index, cfg)
                if isinstance(row, str):
                    triplet_q.append(
                        quarantine_row(
                            DATASET,
                            "triplet",
                            str(source.path),
                            source.query_id(i),
                            row,
                            split=split,
                            category=cat,
                        )
                    )
                    continue
                states = [caption_status(c) for c in row["captions_raw"]]
                counts["one_empty"] += any(s != CAPTION_OK for s in states)
                counts["placeholder"] += CAPTION_PLACEHOLDER in states
                triplets.append(row)
    return triplets, triplet_q, counts


def read_fashioniq(
    annotation_root: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    cfg: FashionIQConfig | None = None,
) -> IngestResult:
    """Read FashionIQ annotations and check their images.

    Args:
        annotation_root: Folder holding ``captions/`` and ``image_splits/``.
        image_root: Folder holding ``<id>.jpg`` / ``<id>.png``.
        cfg: What to read; defaults to every category and split.

    Returns:
        Images (one row per id per category/split file, absolute paths), triplets
        (``query_id = "<category>-<split>-<index in file>"``) and quarantine rows.

    Raises:
        AnnotationError: A captions or split file is missing, is not valid JSON, or
            has the wrong top-level type.
    """
    cfg = cfg or FashionIQConfig()
    layout = layout_of(annotation_root, cfg)
    img_root = Path(image_root).absolute()
    timer = PhaseTimer()

    # 1. Image splits -> (id, category, split, path) records.
    listed, records, quarantine = _read_image_splits(layout, img_root, timer)

    # 2. Image checks (threaded).
    with timer("image_check_s"):
        images, image_q = check_images(records, DATASET, workers=cfg.workers, mode=cfg.image_check)
    with timer("frames_s"):
        missing_q = frame_from_rows(quarantine, QUARANTINE_SCHEMA)
        image_q = concat_frames([missing_q, image_q], QUARANTINE_SCHEMA)
        index = ImageIndex(listed, images, image_q)

    # 3. Captions -> triplets.
    triplets, triplet_q, counts = _read_captions(layout, index, cfg, timer)
    if counts["one_empty"]:
        logger.warning(
            "FashionIQ: %d records have one empty caption (%d of them a placeholder: "
            "na, n/a, none or a bare number); the other caption is used alone",
            counts["one_empty"],
            counts["placeholder"],
        )
    return assemble_result(images, image_q, triplets, triplet_q, timer, "FashionIQ", logger)


def _no_caption_reason(source: _CaptionFile, index_in_file: int, captions: list[str]) -> str:
    """The quarantine reason of a record none of whose captions is usable."""
    described = ", ".join(
        f"{c!r} ({'a placeholder' if caption_status(c) == CAPTION_PLACEHOLDER else 'blank'})"
        for c in captions
    )
    return (
        f"{REASON_EMPTY_CAPTIONS}: record {index_in_file} of {source.path.name} has no usable "
        f"caption: {described}"
    )


def _triplet_row(
    rec: Any,
    index_in_file: int,
    source: _CaptionFile,
    seen: dict[tuple, int],
    index: ImageIndex,
    cfg: FashionIQConfig,
) -> dict[str, Any] | str:
    """One TRIPLET_SCHEMA row from a captions record, or the quarantine reason.

    ``seen`` maps already accepted (candidate, target, c1, c2) keys to their index in
    the file and is updated here.
    """
    cat, split = source.category, source.split
    fields, why = _parse_record(rec, index_in_file, source.labelled)
    if fields is None:
        return why or REASON_BAD_VALUE
    c1, c2 = fields["captions"]
    key = (fields["candidate"], fields["target"], c1, c2)
    if key in seen:
        first = seen[key]
        return (
            f"{REASON_DUPLICATE}: same candidate, target and captions as record "
            f"{first} ({source.query_id(first)})"
        )
    seen[key] = index_in_file
    text = eval_caption(c1, c2)
    if not text:
        return _no_caption_reason(source, index_in_file, [c1, c2])
    problem = index.problem(fields["candidate"], cat, split, "candidate")
    if problem is None and fields["target"] is not None:
        problem = index.problem(fields["target"], cat, split, "target")
    if problem is not None:
        return problem
    color, shape = attribute_flags(f"{c1} {c2}")  # placeholders hold no attribute word
    return {
        "query_id": source.query_id(index_in_file),
        "dataset": DATASET,
        "category": cat,
        "split": split,
        "reference_id": fields["candidate"],
        "target_id": fields["target"],
        "captions_raw": [c1, c2],
        "caption_eval": text,
        "captions_train": train_captions(c1, c2, cfg.random_train_forms),
        "edit_type": edit_type_of(color, shape),
        "edits_color": color,
        "edits_shape": shape,
        "subset_members": [],
        "edit_labels": "{}",
        "valid_targets": [] if fields["target"] is None else [fields["target"]],
    }
