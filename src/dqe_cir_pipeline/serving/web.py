"""The search page: a small web app over a :class:`Searcher`, served on loopback.

``dqe-cir-pipeline serve`` starts it (see :mod:`dqe_cir_pipeline.serving.cli`). The page
lets a user pick a benchmark query (its reference image and text, with the target known)
or upload a reference image, type a modification and see the top-k gallery images with
their scores; when the query comes from the benchmark the target is marked, with its
exact rank even when it is not in the top k.

Routes:

=========================  ==============================================================
``GET /``                  the page (``static/search.html``)
``GET /api/info``          model version, backbone, gallery size, default k
``GET /api/examples``      the benchmark queries the page offers (id, reference, text,
                           target, edit type)
``POST /api/search``       ``{"text", "k", "example_id" | "image_b64" (+ "image_name")}``
                           -> results
``GET /images/{image_id}`` a gallery image or an example's reference (by id only: no path
                           from the request ever reaches the file system)
=========================  ==============================================================

Bad input (an empty text, an unreadable upload or one PIL refuses as a decompression
bomb, a bad ``k``, an unknown example) is answered with status 400 and
``{"detail": "<what is wrong>"}``; an upload is named by its file name when the page sends
one.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from dqe_cir_pipeline.serving.errors import ServingInputError
from dqe_cir_pipeline.serving.images import LoadedImage, load_image_b64, load_image_file
from dqe_cir_pipeline.serving.searcher import Query, Searcher, check_k, check_text

logger = logging.getLogger(__name__)

PAGE = Path(__file__).parent / "static" / "search.html"
#: The largest upload accepted (base64 text of the image, in characters).
MAX_UPLOAD_CHARS = 20 * 1024 * 1024


@dataclass(frozen=True)
class Example:
    """A benchmark query the page offers: its reference image, text and target."""

    example_id: str
    reference_id: str
    reference_path: str
    text: str
    target_id: str | None
    edit_type: str | None


def benchmark_examples(
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    gallery_ids: set[str],
    split: str,
    limit: int = 200,
) -> list[Example]:
    """Up to ``limit`` queries of ``split`` whose target (when known) is in the gallery.

    Args:
        triplets: the ingested triplets table (``query_id, split, reference_id,
            target_id, caption_eval, edit_type``).
        images: the ingested images table (``image_id, path``).
        gallery_ids: the image ids the gallery index holds.
        split: the benchmark split the gallery holds.
        limit: the most examples returned (the first ones, in the table's order, spread
            over edit types when there are several).

    Raises:
        ServingInputError: a reference image of a kept query has no row in ``images``.
    """
    rows = triplets[triplets["split"] == split]
    if "target_id" in rows.columns:
        known = rows["target_id"].notna() & (rows["target_id"].astype(str) != "")
        rows = rows[~known | rows["target_id"].isin(gallery_ids)]
    if "edit_type" in rows.columns and rows["edit_type"].nunique() > 1:
        # interleave edit types so the first examples show every kind of edit
        order = rows.groupby("edit_type", sort=True).cumcount()
        rows = rows.assign(_order=order.to_numpy()).sort_values(["_order", "edit_type"])
    rows = rows.head(limit)
    paths = images.drop_duplicates("image_id").set_index("image_id")["path"]
    out = []
    for row in rows.to_dict("records"):
        ref = str(row["reference_id"])
        if ref not in paths.index:
            raise ServingInputError(
                f"triplets: query {row['query_id']} names reference image {ref!r}, "
                "which the images table does not hold"
            )
        target = row.get("target_id")
        out.append(
            Example(
                example_id=str(row["query_id"]),
                reference_id=ref,
                reference_path=str(paths[ref]),
                text=str(row["caption_eval"]),
                target_id=None if target is None or pd.isna(target) or target == "" else target,
                edit_type=None if pd.isna(row.get("edit_type")) else row.get("edit_type"),
            )
        )
    return out


class SearchRequest(BaseModel):
    """The body of ``POST /api/search``: an example's id or an uploaded image, a text."""

    text: str = ""
    k: int | None = None
    example_id: str | None = None
    image_b64: str | None = Field(default=None, description="the reference image, base64")
    image_name: str | None = Field(
        default=None, description="the uploaded file's name (named in error messages)"
    )


def _bad(err: Exception) -> HTTPException:
    return HTTPException(status_code=400, detail=str(err))


def _upload_source(name: str | None) -> str:
    """How messages name an upload: by its file name when the page sent one."""
    return "the uploaded image" if not name else f"the uploaded image {name[:200]!r}"


def _reference(
    body: SearchRequest, by_id: dict[str, Example]
) -> tuple[Example | None, LoadedImage]:
    """The query's reference image: a benchmark example's file or the uploaded bytes.

    Returns:
        ``(example or None, the decoded image)``.

    Raises:
        ServingInputError: an unknown example, no image, or an upload that is too large
            or that PIL cannot (or will not) decode.
    """
    if body.example_id is not None:
        example = by_id.get(body.example_id)
        if example is None:
            raise ServingInputError(f"no benchmark example {body.example_id!r}")
        return example, load_image_file(example.reference_path, f"example {example.example_id}")
    if body.image_b64:
        source = _upload_source(body.image_name)
        if len(body.image_b64) > MAX_UPLOAD_CHARS:
            raise ServingInputError(f"{source} is larger than {MAX_UPLOAD_CHARS // 2**20} MiB")
        return None, load_image_b64(body.image_b64.split(",")[-1], source)
    raise ServingInputError("no reference image: pick an example or upload one")


def _search(
    searcher: Searcher, by_id: dict[str, Example], lock: threading.Lock, body: SearchRequest
) -> dict[str, Any]:
    """Answer one ``POST /api/search``; bad input raises :class:`ServingInputError`."""
    start = time.perf_counter()
    text = check_text(body.text, "query")
    k = searcher.default_k if body.k is None else check_k(body.k, "query")
    example, loaded = _reference(body, by_id)
    # the benchmark's target answers the benchmark's text, not an edited one
    target = None
    if example is not None and text.strip() == example.text.strip():
        target = example.target_id
    query = Query(loaded, text, k)
    with lock:
        emb = searcher.encode([query])
        results = searcher.answer([query], embeddings=emb)
        target_rank = None
        if target is not None:
            target_rank = searcher.index.rank_of(emb[0], target, searcher.excluded_hash(query))
    return {
        "query": {
            "text": text,
            "k": k,
            "example_id": None if example is None else example.example_id,
            "reference_url": None if example is None else f"/images/{example.reference_id}",
        },
        "target": None if target is None else {"image_id": target, "rank": target_rank},
        "results": [
            {
                "rank": int(r.rank),
                "image_id": str(r.image_id),
                "score": float(r.score),
                "category": str(r.category),
                "is_target": target is not None and r.image_id == target,
                "url": f"/images/{r.image_id}",
            }
            for r in results.itertuples(index=False)
        ],
        "elapsed_ms": round(1000 * (time.perf_counter() - start), 1),
    }


def _shown_example(example: Example) -> dict[str, Any]:
    """An example as the page sees it: its reference by URL, never by server path."""
    row = asdict(example)
    del row["reference_path"]  # the server's file system stays private
    return {**row, "reference_url": f"/images/{example.reference_id}"}


def _image_file(files: dict[str, str], image_id: str) -> FileResponse:
    """A served image by id (404 when the id is unknown or its file is gone)."""
    path = files.get(image_id)
    if path is None:
        raise HTTPException(status_code=404, detail=f"no image {image_id!r} in this gallery")
    if not Path(path).is_file():
        raise HTTPException(status_code=404, detail=f"image {image_id!r}: {path} is gone")
    return FileResponse(path)


def create_app(searcher: Searcher, examples: list[Example] | None = None) -> FastAPI:
    """The search page's app over ``searcher``, offering ``examples`` (may be empty)."""
    examples = list(examples or [])
    by_id = {e.example_id: e for e in examples}
    files = dict(zip(searcher.index.table["image_id"], searcher.index.table["path"], strict=True))
    for e in examples:
        files.setdefault(e.reference_id, e.reference_path)
    lock = threading.Lock()  # one query at a time through the model
    app = FastAPI(title="DQE-CIR search", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return {
            "model_version": searcher.model.version,
            "backbone": searcher.model.backbone_name,
            "gallery_images": len(searcher.index),
            "default_k": searcher.default_k,
            "examples": len(examples),
        }

    @app.get("/api/examples")
    def list_examples() -> list[dict[str, Any]]:
        return [_shown_example(e) for e in examples]

    @app.get("/images/{image_id}")
    def image(image_id: str) -> FileResponse:
        return _image_file(files, image_id)

    @app.post("/api/search")
    def run_search(body: SearchRequest) -> dict[str, Any]:
        try:
            return _search(searcher, by_id, lock, body)
        except ServingInputError as err:
            raise _bad(err) from None

    return app
