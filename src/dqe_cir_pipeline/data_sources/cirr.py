"""CIRR reader (also reads the generated benchmark, which uses the CIRR layout).

Layout::

    <annotation_root>/captions/cap.<version>.<split>.json        # [{pairid, reference, ...}]
    <annotation_root>/image_splits/split.<version>.<split>.json  # {name: "./dev/x.png"}
    <image_root>/<relative path from the split file>

With ``version=None`` (the generated benchmark) the files are ``cap.<split>.json`` and
``split.<split>.json``.

Records: ``pairid``, ``reference``, ``caption``, ``img_set.members`` (6 ids including the
reference) and, except in unlabelled splits (test1), ``target_hard``. A record may also
carry an ``edit`` object (the generated benchmark writes it: ``type``,
``edits_color``, ``edits_shape``, ...): then its flags are used as exact labels and the
whole object is kept as JSON in ``edit_labels``; otherwise the flags come from the
keyword lexicon [design] and ``edit_labels`` is ``"{}"``.

``valid_targets``: every image the record scores 1.0 in ``target_soft`` (real CIRR
rates other images too: 0.5, -1; the generated benchmark's ambiguous tier lists every
image that satisfies the caption), ``target_hard`` always among them; ``[target_hard]``
without ``target_soft``, ``[]`` in unlabelled splits. A valid target that is not a usable
image of the split quarantines the record.

Splits in ``image_only_splits`` are indexed (images checked) without reading captions;
the real CIRR train captions are not shipped here, so a run on this copy lists
``"train"`` there. Any other split without a captions file is an error.

[design] Duplicate ``pairid`` values are detected within a split (the generated
benchmark may restart numbering per split); the first occurrence is kept.

[design] A blank caption (real test1 pairid 27098: ``" "``) or a placeholder one (``na``,
``n/a``, ``none``, a bare number: ``common.caption_status``; none in the real val /
test1 files) is read as empty text and counted, the record kept (docs/data.md).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dqe_cir_pipeline.data_sources.common import (
    CAPTION_BLANK,
    CAPTION_OK,
    CAPTION_PLACEHOLDER,
    REASON_BAD_PATH,
    REASON_BAD_VALUE,
    REASON_DUPLICATE,
    REASON_EMPTY_CAPTIONS,
    REASON_MISSING_FIELD,
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

CATEGORY = "all"


@dataclass
class CIRRConfig:
    """Which parts of a CIRR-layout dataset to read and how.

    Attributes:
        splits: Splits to read.
        dataset_name: Value of the ``dataset`` column (``"cirr"``, ``"synthetic"``).
        version: File-name version tag (``"rc2"``); ``None`` for ``cap.<split>.json``.
        image_only_splits: Splits whose images are indexed but whose captions are not
            read (e.g. CIRR train here, whose captions file is not shipped).
        quarantine_empty_captions: Quarantine records whose caption is blank or a
            placeholder. Off by default [design]: real test1 has one (pairid 27098,
            caption " ") and the evaluation server expects every test1 pairid, and the
            published CIRR results evaluate val over all queries, so such captions are
            kept as empty text (``caption_eval = ""``) and counted.
        unlabelled_splits: Splits whose records have no ``target_hard`` (``target_id``
            is null there); elsewhere a missing target quarantines the record.
        workers: Threads for the image check (``None``: automatic).
        image_check: How the image check looks at each file (``image_check.IMAGE_CHECKS``):
            ``decode`` every pixel (default: a truncated JPEG is quarantined here, not
            found at extraction), ``header`` the container only, ``exists`` no read.
    """

    splits: Sequence[str] = ("train", "val", "test1")
    dataset_name: str = "cirr"
    version: str | None = "rc2"
    image_only_splits: Sequence[str] = ()
    unlabelled_splits: Sequence[str] = ("test1", "test")
    quarantine_empty_captions: bool = False
    workers: int | None = None
    image_check: str = "decode"


def _file_name(prefix: str, version: str | None, split: str) -> str:
    return f"{prefix}.{version}.{split}.json" if version else f"{prefix}.{split}.json"


def image_path(image_root: Path, rel: str) -> Path:
    """Where a split file's relative path ``rel`` points (normalised, not resolved)."""
    return Path(os.path.normpath(image_root / rel))


@dataclass(frozen=True)
class CIRRLayout:
    """The CIRR-layout files of the configured splits (the module docstring's layout):
    the reader opens these, the pre-flight check looks for them."""

    annotation_root: Path
    splits: Sequence[str]
    version: str | None
    image_only_splits: Sequence[str]

    def split_file(self, split: str) -> Path:
        return self.annotation_root / "image_splits" / _file_name("split", self.version, split)

    def caption_file(self, split: str) -> Path:
        return self.annotation_root / "captions" / _file_name("cap", self.version, split)

    def files(self) -> list[AnnotationFile]:
        """Per split: the split file, then its captions file (none for an image-only split)."""
        out: list[AnnotationFile] = []
        for split in self.splits:
            out.append(AnnotationFile(self.split_file(split), SPLIT, split, CATEGORY))
            if split not in self.image_only_splits:
                out.append(AnnotationFile(self.caption_file(split), CAPTIONS, split, CATEGORY))
        return out

    def image_files(self, entries: Any, image_root: Path) -> dict[str, list[Path]]:
        """The file of each name a split file (an object ``name -> relative path``) maps."""
        if not isinstance(entries, dict):
            raise AnnotationError("expected an object mapping image name -> relative path")
        return {str(k): [image_path(image_root, str(v))] for k, v in entries.items()}


def layout_of(annotation_root: str | os.PathLike[str], cfg: CIRRConfig) -> CIRRLayout:
    """The files ``read_cirr`` opens under ``annotation_root`` with ``cfg``."""
    return CIRRLayout(Path(annotation_root), cfg.splits, cfg.version, cfg.image_only_splits)


def _resolve(image_root: Path, rel: str) -> Path | None:
    """Absolute path of ``rel`` under ``image_root``; ``None`` if it escapes the root,
    by ``..`` or through a symlink inside the root."""
    path = image_path(image_root, rel)
    if not (path == image_root or image_root in path.parents):
        return None
    return None if escaping_target(image_root, path) is not None else path


def _exact_flags(edit: Any) -> tuple[bool, bool] | str:
    """Exact (edits_color, edits_shape) from an ``edit`` object, or a reason string."""
    if not isinstance(edit, dict):
        return f"{REASON_BAD_VALUE}: 'edit' is {type(edit).__name__}, not an object"
    for key in ("edits_color", "edits_shape"):
        if key not in edit:
            return f"{REASON_MISSING_FIELD}: 'edit' has no {key!r}"
        if not isinstance(edit[key], bool):
            return f"{REASON_BAD_VALUE}: 'edit.{key}' is {edit[key]!r}, not a boolean"
    return edit["edits_color"], edit["edits_shape"]


def _valid_targets(soft: Any, target: str | None) -> list[str] | str:
    """The sorted images scored 1.0 in ``target_soft`` plus ``target`` (``[]`` when
    unlabelled, ``[target]`` without ``target_soft``), or a quarantine reason."""
    if target is None:
        return []
    if soft is None:
        return [target]
    if not isinstance(soft, dict):
        return f"{REASON_BAD_VALUE}: 'target_soft' is {type(soft).__name__}, not an object"
    for name, score in soft.items():
        if isinstance(score, bool) or not isinstance(score, (int, float)):
            return f"{REASON_BAD_VALUE}: 'target_soft[{name!r}]' is {score!r}, not a number"
    return sorted({target, *(name for name, score in soft.items() if score == 1.0)})


def _parse_record(rec: Any, labelled: bool) -> dict[str, Any] | str:
    """Validate one CIRR record; return its fields or a quarantine reason."""
    if not isinstance(rec, dict):
        return f"{REASON_BAD_VALUE}: record is {type(rec).__name__}, not an object"
    required = ["pairid", "reference", "caption", "img_set"] + (["target_hard"] if labelled else [])
    for key in required:
        if key not in rec or rec[key] is None:
            return f"{REASON_MISSING_FIELD}: no {key!r}"
    pairid = rec["pairid"]
    if isinstance(pairid, bool) or not isinstance(pairid, (int, str)) or pairid == "":
        return f"{REASON_BAD_VALUE}: 'pairid' is {pairid!r}"
    for key in ("reference", "caption") + (("target_hard",) if labelled else ()):
        if not isinstance(rec[key], str):
            return f"{REASON_BAD_VALUE}: {key!r} is {rec[key]!r}, not a string"
    img_set = rec["img_set"]
    if not isinstance(img_set, dict) or "members" not in img_set:
        return f"{REASON_MISSING_FIELD}: no 'img_set.members'"
    members = img_set["members"]
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        return f"{REASON_BAD_VALUE}: 'img_set.members' is {members!r}"
    valid = _valid_targets(rec.get("target_soft"), rec["target_hard"] if labelled else None)
    if isinstance(valid, str):
        return valid
    return {
        "pairid": pairid,
        "reference": rec["reference"],
        "target": rec["target_hard"] if labelled else None,
        "caption": rec["caption"],
        "members": members,
        "edit": rec.get("edit"),
        "valid_targets": valid,
    }


def _read_image_splits(
    layout: CIRRLayout, img_root: Path, cfg: CIRRConfig, timer: PhaseTimer
) -> tuple[dict[tuple[str, str], list[str]], list[ImageRecord], list[dict]]:
    """Read every split file: the listed names, the images to check, bad entries.

    Returns:
        ``(listed, records, quarantine)``: ``(category, split) -> names``, one
        ``(name, category, split, absolute path)`` record per usable entry, and image
        quarantine rows for entries with a bad path.

    Raises:
        AnnotationError: A split file is missing, not valid JSON or not an object.
    """
    ds = cfg.dataset_name
    hint = f"expected <annotation_root>/image_splits/{_file_name('split', cfg.version, '<split>')}"
    listed: dict[tuple[str, str], list[str]] = {}
    records: list[ImageRecord] = []
    pre_q: list[dict] = []
    for split in cfg.splits:
        path = layout.split_file(split)
        with timer("json_s"):
            mapping = load_json(path, hint=hint)
        expect_type(mapping, dict, path, "an object mapping image names to paths")
        listed[(CATEGORY, split)] = list(mapping)
        for name, rel in mapping.items():
            if not isinstance(rel, str) or not rel:
                pre_q.append(
                    quarantine_row(
                        ds,
                        "image",
                        str(path),
                        name,
                        f"{REASON_BAD_VALUE}: path is {rel!r}",
                        split=split,
                        category=CATEGORY,
                    )
                )
                continue
            resolved = _resolve(img_root, rel)
            if resolved is None:
                pre_q.append(
                    quarantine_row(
                        ds,
                        "image",
                        str(path),
                        name,
                        f"{REASON_BAD_PATH}: {rel!r} points outside the image root {img_root}",
                        split=split,
                        category=CATEGORY,
                    )
                )
                continue
            records.append((name, CATEGORY, split, str(resolved)))
    return listed, records, pre_q


def _unique_record(
    rec: Any, position: int, labelled: bool, seen: dict[str, int]
) -> tuple[str, dict[str, Any] | str]:
    """Parse one captions record and reject a repeated ``pairid``.

    Args:
        rec: The raw record.
        position: Its index in the captions file.
        labelled: Whether the split carries targets.
        seen: ``pairid -> position`` of the records accepted so far; updated here.

    Returns:
        ``(record id, fields)`` or ``(record id, quarantine reason)``.
    """
    fields = _parse_record(rec, labelled)
    record_id = str(rec["pairid"]) if isinstance(rec, dict) and "pairid" in rec else f"#{position}"
    where = f"record {position}"
    if isinstance(fields, str):
        return record_id, f"{fields} ({where})"
    qid = str(fields["pairid"])
    if qid in seen:
        return qid, (
            f"{REASON_DUPLICATE}: pairid {qid} already used by record {seen[qid]} ({where})"
        )
    seen[qid] = position
    return qid, fields


def _image_problem(fields: dict[str, Any], split: str, index: ImageIndex) -> str | None:
    """The first unusable image among reference, target, the other valid targets and
    subset members, if any."""
    refs = [("reference", fields["reference"])]
    if fields["target"] is not None:
        refs.append(("target", fields["target"]))
    refs += [("valid target", v) for v in fields["valid_targets"] if v != fields["target"]]
    refs += [("img_set member", m) for m in fields["members"]]
    return next(
        (
            p
            for role, image_id in refs
            if (p := index.problem(image_id, CATEGORY, split, role)) is not None
        ),
        None,
    )


def _triplet_row(
    fields: dict[str, Any],
    qid: str,
    split: str,
    where: str,
    index: ImageIndex,
    cfg: CIRRConfig,
) -> dict[str, Any] | str:
    """One TRIPLET_SCHEMA row from a parsed, unique record, or the quarantine reason.

    Args:
        fields: The record's fields from :func:`_parse_record`.
        qid: Its query id (``str(pairid)``).
        split: The split it belongs to.
        where: ``"record <position>"``, appended to some reasons.
        index: The usable images.
        cfg: The reader settings.
    """
    caption = fields["caption"].strip() if caption_status(fields["caption"]) == CAPTION_OK else ""
    if not caption and cfg.quarantine_empty_captions:
        return f"{REASON_EMPTY_CAPTIONS}: caption is {fields['caption']!r} ({where})"
    problem = _image_problem(fields, split, index)
    if problem is not None:
        return problem
    if fields["edit"] is not None:
        flags = _exact_flags(fields["edit"])
        if isinstance(flags, str):
            return f"{flags} ({where})"
        color, shape = flags
        edit_labels = json.dumps(fields["edit"], sort_keys=True)
    else:
        color, shape = attribute_flags(caption)
        edit_labels = "{}"
    return {
        "query_id": qid,
        "dataset": cfg.dataset_name,
        "category": CATEGORY,
        "split": split,
        "reference_id": fields["reference"],
        "target_id": fields["target"],
        "captions_raw": [fields["caption"]],
        "caption_eval": caption,
        "captions_train": [caption],
        "edit_type": edit_type_of(color, shape),
        "edits_color": color,
        "edits_shape": shape,
        "subset_members": list(fields["members"]),
        "edit_labels": edit_labels,
        "valid_targets": list(fields["valid_targets"]),
    }


def _read_split_captions(
    path: Path, split: str, index: ImageIndex, cfg: CIRRConfig, timer: PhaseTimer
) -> tuple[list[dict], list[dict]]:
    """Read one split's captions file into triplet rows and quarantine rows.

    Raises:
        AnnotationError: The file is missing, not valid JSON or not a list.
    """
    ds = cfg.dataset_name
    with timer("json_s"):
        recs = load_json(
            path,
            hint=f"captions for split {split!r}; list the split in image_only_splits "
            "to index its images without captions",
        )
    expect_type(recs, list, path, "a list of caption records")
    labelled = split not in cfg.unlabelled_splits
    triplets: list[dict] = []
    triplet_q: list[dict] = []
    seen: dict[str, int] = {}
    empty = {CAPTION_BLANK: 0, CAPTION_PLACEHOLDER: 0}
    for i, rec in enumerate(recs):
        qid, fields = _unique_record(rec, i, labelled, seen)
        if isinstance(fields, str):
            triplet_q.append(
                quarantine_row(
                    ds, "triplet", str(path), qid, fields, split=split, category=CATEGORY
                )
            )
            continue
        status = caption_status(fields["caption"])
        if status != CAPTION_OK:
            empty[status] += 1
        row = _triplet_row(fields, qid, split, f"record {i}", index, cfg)
        if isinstance(row, str):
            triplet_q.append(
                quarantine_row(ds, "triplet", str(path), qid, row, split=split, category=CATEGORY)
            )
            continue
        triplets.append(row)
    if any(empty.values()):
        logger.warning(
            "%s %s: %d records have a blank caption and %d a placeholder (%s)",
            ds,
            split,
            empty[CAPTION_BLANK],
            empty[CAPTION_PLACEHOLDER],
            "quarantined" if cfg.quarantine_empty_captions else "kept with empty text",
        )
    return triplets, triplet_q


def read_cirr(
    annotation_root: str | os.PathLike[str],
    image_root: str | os.PathLike[str],
    cfg: CIRRConfig | None = None,
) -> IngestResult:
    """Read CIRR-layout annotations and check their images.

    Args:
        annotation_root: Folder holding ``captions/`` and ``image_splits/``.
        image_root: Folder the split files' relative paths start from.
        cfg: What to read; defaults to CIRR rc2 train/val/test1.

    Returns:
        Images (category ``"all"``), triplets (``query_id = str(pairid)``) and
        quarantine rows.

    Raises:
        AnnotationError: A split file is missing, a captions file is missing for a
            split not in ``image_only_splits``, a file is not valid JSON, or a file
            has the wrong top-level type.
    """
    cfg = cfg or CIRRConfig()
    ds = cfg.dataset_name
    layout = layout_of(annotation_root, cfg)
    img_root = Path(os.path.abspath(image_root))
    timer = PhaseTimer()

    # 1. Image splits.
    listed, records, pre_q = _read_image_splits(layout, img_root, cfg, timer)
    with timer("image_check_s"):
        images, image_q = check_images(records, ds, workers=cfg.workers, mode=cfg.image_check)
    with timer("frames_s"):
        image_q = concat_frames(
            [frame_from_rows(pre_q, QUARANTINE_SCHEMA), image_q], QUARANTINE_SCHEMA
        )
        index = ImageIndex(listed, images, image_q)

    # 2. Captions.
    triplets: list[dict] = []
    triplet_q: list[dict] = []
    for split in cfg.splits:
        path = layout.caption_file(split)
        if split in cfg.image_only_splits:
            logger.warning(
                "%s: split %r is image-only: %d images indexed, captions (%s) not read",
                ds,
                split,
                len(listed[(CATEGORY, split)]),
                path,
            )
            continue
        rows, rejected = _read_split_captions(path, split, index, cfg, timer)
        triplets += rows
        triplet_q += rejected

    return assemble_result(images, image_q, triplets, triplet_q, timer, ds, logger)
