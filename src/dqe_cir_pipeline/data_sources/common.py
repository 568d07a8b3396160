"""Pieces shared by every annotation reader: results, JSON loading, the rejection rule.

Every reader returns an :class:`IngestResult` of three DataFrames (columns and dtypes of
:mod:`~dqe_cir_pipeline.data_sources.schema`). Nothing is dropped silently: a rejected
image or triplet becomes a quarantine row whose ``reason`` starts with a short code
(``"missing file: ..."``), and :func:`enforce_rejection_threshold` fails loudly when too
much was rejected. Image files are checked in :mod:`.image_check`. A caption that says
nothing (blank, or a placeholder such as ``n/a``) is read as empty text by every reader
(:func:`caption_status`; the rule: docs/data.md) and counted in :meth:`IngestResult.counts`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from dqe_cir_pipeline.data_sources.schema import (
    IMAGE_SCHEMA,
    QUARANTINE_SCHEMA,
    TRIPLET_SCHEMA,
)
from dqe_cir_pipeline.io_utils import SHORT_HASH_CHARS

logger = logging.getLogger(__name__)

# Reason codes: the text before the first ": " of every quarantine reason.
REASON_MISSING_FILE = "missing file"
REASON_UNDECODABLE = "undecodable image"
REASON_BAD_PATH = "bad image path"
REASON_UNKNOWN_IMAGE = "unknown image"
REASON_QUARANTINED_IMAGE = "quarantined image"
REASON_MISSING_FIELD = "missing field"
REASON_BAD_VALUE = "bad value"
REASON_DUPLICATE = "duplicate"
REASON_EMPTY_CAPTIONS = "empty captions"


#: [design] Caption texts that carry no edit: annotators' "not applicable" answers
#: (FashionIQ has 32 train + val records with one), compared case-insensitively after
#: cleaning. A bare number ("2": 5 train records) is one too (:func:`caption_status`).
PLACEHOLDER_CAPTIONS = frozenset({"na", "n/a", "none"})
_BARE_NUMBER = re.compile(r"[0-9]+")
#: What is stripped from both ends before judging a caption (FashionIQ's published
#: cleaning, ``.?, ``, plus other whitespace).
_CAPTION_EDGES = ".?, \t\r\n"
#: :func:`caption_status` values.
CAPTION_OK, CAPTION_BLANK, CAPTION_PLACEHOLDER = "ok", "blank", "placeholder"


def caption_status(text: str) -> str:
    """Whether a raw caption carries text: ``ok``, ``blank`` (nothing after cleaning) or
    ``placeholder`` (``na``, ``n/a``, ``none`` or a bare number). Readers use the last
    two as empty text (a record keeps its other caption; with none left it is
    quarantined)."""
    core = text.strip(_CAPTION_EDGES)
    if not core:
        return CAPTION_BLANK
    if core.lower() in PLACEHOLDER_CAPTIONS or _BARE_NUMBER.fullmatch(core):
        return CAPTION_PLACEHOLDER
    return CAPTION_OK


def caption_counts(captions_raw: Iterable[Iterable[str]]) -> dict[str, int]:
    """Records (one list of raw captions each) with a placeholder caption, and with a
    blank one: ``captions_placeholder``, ``captions_blank``."""
    placeholder = blank = 0
    for captions in captions_raw:
        states = {caption_status(str(c)) for c in captions}
        placeholder += CAPTION_PLACEHOLDER in states
        blank += CAPTION_BLANK in states
    return {"captions_placeholder": placeholder, "captions_blank": blank}


class AnnotationError(ValueError):
    """An annotation file is missing, not valid JSON, or not shaped as expected."""


class IngestionError(RuntimeError):
    """Too many inputs were rejected for the ingestion to be trusted."""


# --------------------------------------------------------------------------- frames


def _pandas_dtype(arrow_type: pa.DataType) -> Any:
    """Pandas dtype we store an Arrow column type in (object for strings and lists)."""
    if pa.types.is_int32(arrow_type):
        return "int32"
    if pa.types.is_boolean(arrow_type):
        return "bool"
    # [design] strings and lists stay Python objects: the frames are small, object
    # dtype behaves the same on pandas 2 and 3, and ``None`` stays ``None`` (a null
    # target) instead of becoming NaN.
    return object


def empty_frame(schema: pa.Schema) -> pd.DataFrame:
    """An empty DataFrame with ``schema``'s columns, in order, with matching dtypes."""
    return pd.DataFrame({f.name: pd.Series([], dtype=_pandas_dtype(f.type)) for f in schema})


def frame_from_rows(rows: Sequence[Mapping[str, Any]], schema: pa.Schema) -> pd.DataFrame:
    """Build a DataFrame with exactly ``schema``'s columns from dict rows.

    Args:
        rows: One mapping per row holding at least every schema column; extra keys are
            ignored.
        schema: The target Arrow schema.

    Returns:
        A DataFrame whose columns are ``schema.names`` in order, with a RangeIndex.
    """
    if not rows:
        return empty_frame(schema)
    columns = {
        f.name: pd.Series([r[f.name] for r in rows], dtype=_pandas_dtype(f.type)) for f in schema
    }
    return pd.DataFrame(columns)


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Convert a reader frame to Arrow, checking columns and non-nullable fields.

    Args:
        df: A frame produced by a reader.
        schema: The schema it must follow.

    Returns:
        The Arrow table.

    Raises:
        ValueError: When columns differ from the schema or a non-nullable column has
            nulls (``pa.Table.from_pandas`` does not enforce nullability itself).
    """
    if list(df.columns) != schema.names:
        raise ValueError(f"columns {list(df.columns)} != schema {schema.names}")
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    for f in schema:
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"column {f.name!r} is not nullable but has nulls")
    return table


@dataclass
class IngestResult:
    """What a reader returns: image index, triplets and the rejected inputs.

    Attributes:
        images: Rows of :data:`~dqe_cir_pipeline.data_sources.schema.IMAGE_SCHEMA`.
        triplets: Rows of :data:`~dqe_cir_pipeline.data_sources.schema.TRIPLET_SCHEMA`.
        quarantine: Rows of
            :data:`~dqe_cir_pipeline.data_sources.schema.QUARANTINE_SCHEMA`.
        timings: Seconds spent per phase (``json_s``, ``image_check_s``,
            ``records_s``, ``frames_s``, ``total_s``); diagnostics only.
    """

    images: pd.DataFrame = field(default_factory=lambda: empty_frame(IMAGE_SCHEMA))
    triplets: pd.DataFrame = field(default_factory=lambda: empty_frame(TRIPLET_SCHEMA))
    quarantine: pd.DataFrame = field(default_factory=lambda: empty_frame(QUARANTINE_SCHEMA))
    timings: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def counts(self) -> dict[str, int]:
        """Row counts, including quarantined rows per kind, and the accepted triplets
        whose captions include a placeholder or a blank one, read as empty text (for
        logs, the ingestion report and its metrics)."""
        q = self.quarantine
        return {
            "images": len(self.images),
            "triplets": len(self.triplets),
            "quarantined_images": int((q["kind"] == "image").sum()),
            "quarantined_triplets": int((q["kind"] == "triplet").sum()),
            **caption_counts(self.triplets["captions_raw"]),
        }

    def to_arrow(self) -> dict[str, pa.Table]:
        """The three frames as Arrow tables with the canonical schemas."""
        return {
            "images": to_arrow(self.images, IMAGE_SCHEMA),
            "triplets": to_arrow(self.triplets, TRIPLET_SCHEMA),
            "quarantine": to_arrow(self.quarantine, QUARANTINE_SCHEMA),
        }


def concat_frames(frames: Iterable[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    """Stack frames of one schema, keeping its column order and dtypes."""
    non_empty = [f for f in frames if len(f)]
    if not non_empty:
        return empty_frame(schema)
    out = pd.concat(non_empty, ignore_index=True)[schema.names]
    return out.astype({f.name: _pandas_dtype(f.type) for f in schema})


class PhaseTimer:
    """Accumulates wall time per named phase (``with timer("json_s"): ...``)."""

    def __init__(self) -> None:
        """Start the total clock."""
        self._start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Add the time spent inside the block to ``phase``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t

    def finish(self) -> dict[str, float]:
        """Per-phase seconds plus ``total_s``; ``records_s`` is the unaccounted rest."""
        out = dict(self.seconds)
        out["total_s"] = time.perf_counter() - self._start
        out["records_s"] = max(0.0, out["total_s"] - sum(self.seconds.values()))
        return out


def quarantine_row(
    dataset: str,
    kind: str,
    source_file: str,
    record: str,
    reason: str,
    *,
    split: str,
    category: str,
) -> dict[str, str]:
    """One quarantine row (``kind`` is ``"image"`` or ``"triplet"``).

    ``split`` and ``category`` say which part of the benchmark lost the record: the
    rejection threshold is judged per part (:func:`rejection_problems`).
    """
    return {
        "dataset": dataset,
        "kind": kind,
        "split": split,
        "category": category,
        "source_file": str(source_file),
        "record": str(record),
        "reason": reason,
    }


def reason_code(reason: str) -> str:
    """The short cause at the start of a quarantine reason (text before ``": "``)."""
    return reason.split(": ", 1)[0]


# ----------------------------------------------------------------------------- JSON


def load_json(path: str | os.PathLike[str], hint: str | None = None) -> Any:
    """Read a JSON annotation file with errors that say where the problem is.

    Args:
        path: The file to read.
        hint: Extra text for the missing-file message, e.g. the expected layout.

    Returns:
        The decoded JSON value.

    Raises:
        AnnotationError: The file does not exist (message names it, plus ``hint``), is
            not valid JSON (message names the file, line, column and character offset
            of the first error), or an object repeats a key (JSON would silently keep
            the last value; the message names the file and the key).
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        extra = f" ({hint})" if hint else ""
        raise AnnotationError(f"annotation file not found: {p}{extra}") from None
    except IsADirectoryError:
        raise AnnotationError(f"annotation path is a directory, not a file: {p}") from None

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise AnnotationError(f"duplicate key {key!r} in {p}: which value is meant?")
            out[key] = value
        return out

    try:
        return json.loads(raw, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"invalid JSON in {p} at line {exc.lineno}, column {exc.colno} "
            f"(char {exc.pos}): {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise AnnotationError(f"{p} is not UTF-8 text (byte {exc.start}): {exc.reason}") from exc


def expect_type(
    value: Any, expected: type | tuple[type, ...], path: str | os.PathLike[str], what: str
) -> None:
    """Raise :class:`AnnotationError` when a whole file has the wrong top-level shape."""
    if not isinstance(value, expected):
        names = (
            " or ".join(t.__name__ for t in expected)
            if isinstance(expected, tuple)
            else expected.__name__
        )
        raise AnnotationError(f"{path}: expected {what} (JSON {names}), got {type(value).__name__}")


def assemble_result(
    images: pd.DataFrame,
    image_quarantine: pd.DataFrame,
    triplets: Sequence[Mapping[str, Any]],
    triplet_quarantine: Sequence[Mapping[str, Any]],
    timer: PhaseTimer,
    label: str,
    log: logging.Logger = logger,
) -> IngestResult:
    """A reader's :class:`IngestResult` from its parts, timed and logged.

    Args:
        images: The accepted IMAGE_SCHEMA frame.
        image_quarantine: The QUARANTINE_SCHEMA frame of rejected images.
        triplets: Accepted TRIPLET_SCHEMA rows.
        triplet_quarantine: Quarantine rows of rejected triplets (listed after images').
        timer: The reader's timer (building the frames counts as ``frames_s``).
        label: Name of the dataset in the log line.
        log: Logger for the summary line (the reader's own).

    Returns:
        The result, its ``timings`` set from ``timer``.
    """
    with timer("frames_s"):
        result = IngestResult(
            images=images,
            triplets=frame_from_rows(triplets, TRIPLET_SCHEMA),
            quarantine=concat_frames(
                [image_quarantine, frame_from_rows(triplet_quarantine, QUARANTINE_SCHEMA)],
                QUARANTINE_SCHEMA,
            ),
        )
    result.timings = timer.finish()
    log.info(
        "%s: %s; timings %s",
        label,
        result.counts(),
        {k: round(v, 2) for k, v in result.timings.items()},
    )
    return result


# ------------------------------------------------------------------------ threshold


def _part(split: str, category: str) -> str:
    """``val`` or ``val/dress``: the part of a benchmark a threshold is judged on."""
    return split if category in ("", "all") else f"{split}/{category}"


def rejection_problems(
    result: IngestResult, max_rejected_fraction: float, n_examples: int = 3
) -> list[str]:
    """The parts of a benchmark that lost more than ``max_rejected_fraction`` of their input.

    The rule ingestion fails on (:func:`enforce_rejection_threshold`) and the pre-flight
    check predicts with: for images and for triplets separately, within every split and,
    for FashionIQ, every category of it (``val/dress``), the share
    ``quarantined / (accepted + quarantined)`` must not exceed the threshold. Judging
    each part alone keeps a small split from hiding behind a large one (12 of 210 val
    queries lost is 5.7 % of val, however many train queries there are).

    Args:
        result: A reader's output.
        max_rejected_fraction: Largest tolerated share, in ``[0, 1]``.
        n_examples: How many example rows each problem shows.

    Returns:
        One message per failing (kind, part), naming the part, the counts, the share,
        the counts per reason code and the first examples (file, record, reason);
        empty when every part is within the threshold.

    Raises:
        ValueError: ``max_rejected_fraction`` outside ``[0, 1]``.
    """
    if not 0.0 <= max_rejected_fraction <= 1.0:
        raise ValueError(f"max_rejected_fraction must be in [0, 1], got {max_rejected_fraction}")
    q = result.quarantine
    problems: list[str] = []
    for kind, accepted_rows in (("image", result.images), ("triplet", result.triplets)):
        rejected_rows = q[q["kind"] == kind]
        if rejected_rows.empty:
            continue
        accepted = Counter(zip(accepted_rows["split"], accepted_rows["category"], strict=True))
        for (split, category), rejected in rejected_rows.groupby(["split", "category"], sort=True):
            total = accepted.get((split, category), 0) + len(rejected)
            share = len(rejected) / total
            if share <= max_rejected_fraction:
                continue
            per_reason = Counter(reason_code(r) for r in rejected["reason"])
            examples = "\n".join(
                f"    {row.source_file} [{row.record}]: {row.reason}"
                for row in rejected.head(n_examples).itertuples(index=False)
            )
            problems.append(
                f"{_part(split, category)}: {len(rejected)} of {total} {kind}s quarantined "
                f"({share:.1%} > {max_rejected_fraction:.1%}); by reason: "
                f"{dict(per_reason.most_common())}\n  first examples:\n{examples}"
            )
    return problems


def enforce_rejection_threshold(
    result: IngestResult, max_rejected_fraction: float, n_examples: int = 3
) -> None:
    """Fail when a split (or FashionIQ category) lost too much of its input.

    A wrong image root quarantines every image (and with them every triplet), so it
    fails here instead of producing an empty dataset; a handful of missing images of a
    small split fails too (the rule: :func:`rejection_problems`).

    Args:
        result: A reader's output.
        max_rejected_fraction: Largest tolerated share per part, in ``[0, 1]``.
        n_examples: How many example rows the error message shows per problem.

    Raises:
        ValueError: ``max_rejected_fraction`` outside ``[0, 1]``.
        IngestionError: A part exceeds the threshold; the message names the part, the
            share, the counts per reason code and the first examples.
    """
    problems = rejection_problems(result, max_rejected_fraction, n_examples)
    if problems:
        raise IngestionError(rejection_message(result.quarantine["dataset"], problems))


def rejection_message(datasets: Iterable[str], problems: Sequence[str]) -> str:
    """The error text ingestion fails with for ``problems`` (of :func:`rejection_problems`)."""
    return (
        f"ingestion of {', '.join(sorted(set(datasets)))} rejected too much input (check "
        "the image root and annotation paths; every rejected row is in the quarantine "
        "table):\n" + "\n".join(problems)
    )


def dataset_fingerprint(images: pd.DataFrame, triplets: pd.DataFrame) -> str:
    """A short hash of what a run trains and evaluates on: image bytes and queries.

    Covers every image's id, split and content hash and every query's id, split,
    reference, target, evaluation caption, training caption forms and edit type, and the
    valid targets of queries that have more than their annotated one, so any change to
    the data a model saw or is scored against changes it. Single-target data hashes as
    it did before ``valid_targets`` existed, so earlier runs still resume.
    """
    h = hashlib.sha256()

    def text(values: pd.Series) -> bytes:  # a missing value (unlabelled test target) hashes as ""
        return "\x1f".join("" if pd.isna(v) else str(v) for v in values).encode()

    for col in ("image_id", "split", "content_hash"):
        h.update(text(images[col]))
    for col in ("query_id", "split", "reference_id", "target_id", "caption_eval", "edit_type"):
        h.update(text(triplets[col]))
    h.update(text(triplets["captions_train"].map(lambda forms: "\x1e".join(map(str, forms)))))
    if "valid_targets" in triplets:
        own = [[] if pd.isna(t) else [str(t)] for t in triplets["target_id"]]
        extra = [
            f"{q}\x1d" + "\x1e".join(map(str, valid))
            for q, mine, valid in zip(
                triplets["query_id"], own, triplets["valid_targets"], strict=True
            )
            if [str(v) for v in valid] != mine
        ]
        if extra:
            h.update("\x1f".join(extra).encode())
    return h.hexdigest()[:SHORT_HASH_CHARS]


def escaping_target(root: Path, path: Path) -> Path | None:
    """Where ``path`` really leads when that is outside ``root`` (through a symlink),
    else ``None``. ``root`` itself may be a link: both sides are resolved."""
    real_root, real = Path(os.path.realpath(root)), Path(os.path.realpath(path))
    inside = real == real_root or real_root in real.parents
    return None if inside else real
