"""Canonical table schemas shared by every reader and every downstream pipeline.

All readers (FashionIQ, CIRR, the generated benchmark) emit exactly these columns, so
embedding extraction, mining, training and evaluation never care where data came from.
The docs page ``docs/data.md`` describes each column for users.
"""

from __future__ import annotations

import pyarrow as pa

#: One row per (image, category, split) membership. An image listed in two splits or
#: categories appears twice; ``image_id`` + ``content_hash`` identify its pixels.
IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),  # fashioniq | cirr | synthetic
        pa.field("category", pa.string(), nullable=False),  # dress|shirt|toptee, or "all"
        pa.field("split", pa.string(), nullable=False),  # train | val | test | test1
        pa.field("path", pa.string(), nullable=False),  # absolute path of the image file
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),  # sha256 hex of the file bytes
    ]
)

#: One row per composed query (reference image + modification text [-> target]).
TRIPLET_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),  # CIRR/synthetic: str(pairid)
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("reference_id", pa.string(), nullable=False),
        pa.field("target_id", pa.string(), nullable=True),  # null when unlabelled (test)
        pa.field("captions_raw", pa.list_(pa.string()), nullable=False),
        pa.field("caption_eval", pa.string(), nullable=False),  # the protocol's eval text
        pa.field("captions_train", pa.list_(pa.string()), nullable=False),  # forms to sample
        pa.field("edit_type", pa.string(), nullable=False),  # color | shape | both | other
        pa.field("edits_color", pa.bool_(), nullable=False),
        pa.field("edits_shape", pa.bool_(), nullable=False),
        pa.field("subset_members", pa.list_(pa.string()), nullable=False),  # CIRR img_set
        pa.field("edit_labels", pa.string(), nullable=False),  # JSON; exact for synthetic
        # every image that satisfies the query, target_id included ([] when unlabelled)
        pa.field("valid_targets", pa.list_(pa.string()), nullable=False),
    ]
)

#: Rejected inputs: never dropped silently, always a row here (or a raised error).
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # image | triplet
        pa.field("split", pa.string(), nullable=False),  # the split the record belongs to
        pa.field("category", pa.string(), nullable=False),  # dress|shirt|toptee, or "all"
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("record", pa.string(), nullable=False),  # index / id of the bad record
        pa.field("reason", pa.string(), nullable=False),
    ]
)

EDIT_TYPES: tuple[str, ...] = ("color", "shape", "both", "other")


def edit_type_of(edits_color: bool, edits_shape: bool) -> str:
    """Map the two attribute flags to the edit-type bucket used in every breakdown."""
    if edits_color and edits_shape:
        return "both"
    if edits_color:
        return "color"
    if edits_shape:
        return "shape"
    return "other"
