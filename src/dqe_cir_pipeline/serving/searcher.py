"""Answering queries: a reference image and a text in, ranked gallery images out.

:class:`Searcher` (a query model and a gallery index it checked) serves the command line,
the notebook function and the MLflow model. A request has one row per query: ``text``,
``image_b64`` or ``image_path`` (base64 wins), optional ``k`` (docs/serving.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from dqe_cir_pipeline.serving.errors import ServingInputError
from dqe_cir_pipeline.serving.images import (
    LoadedImage,
    decode_bytes,
    from_pil,
    load_image_b64,
    load_image_file,
)
from dqe_cir_pipeline.serving.index import GalleryIndex
from dqe_cir_pipeline.serving.query_model import QueryModel

#: The request's columns (docs/serving.md).
REQUEST_COLUMNS = ("text", "image_b64", "image_path", "k")
#: The answer's columns.
ANSWER_COLUMNS = ("query", "rank", "image_id", "path", "category", "score")


@dataclass(frozen=True)
class Query:
    """One decoded query: the reference image, the text and how many results."""

    image: LoadedImage
    text: str
    k: int


def _blank(value: object) -> bool:
    """A missing cell: ``None``, NaN or an empty / whitespace string."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_text(text: object, where: str) -> str:
    """The text of a query, refused when missing or empty."""
    if _blank(text):
        raise ServingInputError(f"{where}: the text is empty; say how the image should change")
    if not isinstance(text, str):
        raise ServingInputError(f"{where}: the text must be a string, got {type(text).__name__}")
    return text


def check_k(k: object, where: str) -> int:
    """A positive whole ``k``."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or k < 1:
        raise ServingInputError(f"{where}: k must be a whole number >= 1, got {k!r}")
    return int(k)


def load_reference(image: str | Path | bytes | Image.Image, where: str = "image") -> LoadedImage:
    """A query image given as a path, raw bytes or a PIL image."""
    if isinstance(image, Image.Image):
        return from_pil(image, where)
    if isinstance(image, bytes):
        return decode_bytes(image, where)
    return load_image_file(image)


def parse_request(frame: pd.DataFrame, default_k: int) -> list[Query]:
    """Decode a request table into queries; ServingInputError names the row of bad input."""
    if not isinstance(frame, pd.DataFrame):
        raise ServingInputError(f"the request must be a table, got {type(frame).__name__}")
    unknown = sorted(set(frame.columns) - set(REQUEST_COLUMNS))
    if unknown:
        raise ServingInputError(f"unknown request columns {unknown}; known: {REQUEST_COLUMNS}")
    if "text" not in frame.columns:
        raise ServingInputError("the request has no 'text' column")
    if "image_b64" not in frame.columns and "image_path" not in frame.columns:
        raise ServingInputError("the request needs an 'image_b64' or an 'image_path' column")
    if frame.empty:
        raise ServingInputError("the request has no rows")
    queries = []
    for i, row in enumerate(frame.to_dict("records")):
        where = f"row {i}"
        text = check_text(row.get("text"), where)
        k = default_k if _blank(row.get("k")) else check_k(row.get("k"), where)
        if not _blank(row.get("image_b64")):
            image = load_image_b64(str(row["image_b64"]), f"{where} image_b64")
        elif not _blank(row.get("image_path")):
            image = load_image_file(str(row["image_path"]), f"{where} image_path")
        else:
            raise ServingInputError(f"{where}: no image (give image_b64 or image_path)")
        queries.append(Query(image, text, k))
    return queries


class Searcher:
    """A query model and a gallery index it may search (StaleIndexError otherwise).

    ``exclude_reference``: leave out gallery images with the reference's exact bytes;
    ``index_name``: how errors name the index; ``default_k``: when a query does not say.
    """

    def __init__(
        self,
        model: QueryModel,
        index: GalleryIndex,
        exclude_reference: bool = True,
        batch_size: int = 64,
        index_name: str = "gallery index",
        default_k: int = 10,
    ) -> None:
        index.check_model(model, index_name)
        self.default_k = default_k
        self.model = model
        self.index = index
        self.exclude_reference = exclude_reference
        self.batch_size = batch_size

    def encode(self, queries: Sequence[Query]) -> torch.Tensor:
        """The ``(N, P)`` composed-query embeddings of decoded queries."""
        return self.model.encode_queries(
            [x.image.image for x in queries], [x.text for x in queries], self.batch_size
        )

    def excluded_hash(self, query: Query) -> str | None:
        """The content hash the gallery leaves out for ``query`` (its reference), if any."""
        return query.image.content_hash if self.exclude_reference else None

    def answer(
        self,
        queries: Sequence[Query],
        approximate: bool | None = None,
        embeddings: torch.Tensor | None = None,
    ) -> pd.DataFrame:
        """Ranked results of decoded queries (columns: :data:`ANSWER_COLUMNS`);
        ``embeddings``: their :meth:`encode` output when already computed."""
        q = self.encode(queries) if embeddings is None else embeddings
        hashes = [self.excluded_hash(x) for x in queries]
        return self.index.search(q, [x.k for x in queries], hashes, approximate)

    def answer_request(self, frame: pd.DataFrame, default_k: int) -> pd.DataFrame:
        """Answer a request table (the MLflow model's input)."""
        return self.answer(parse_request(frame, default_k))

    def search(
        self, image: str | Path | bytes | Image.Image, text: str, k: int = 10
    ) -> pd.DataFrame:
        """Top-``k`` gallery images for one query: rank, image_id, path, category, score."""
        query = Query(load_reference(image), check_text(text, "query"), check_k(k, "query"))
        return self.answer([query]).drop(columns="query")
