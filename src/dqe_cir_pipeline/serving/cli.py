"""``dqe-cir-pipeline search``: query the trained model from the command line.

Example::

    dqe-cir-pipeline search --image ref.png --text "make it red" -k 10 \\
        --model models:/dqe_cir_synthetic/latest --grid answer.png

Prints rank, image id, path and score per result; ``--grid`` also draws the reference,
the text and the top-k images. Bad input (an unreadable image, an empty text, a stale
gallery index, ``k`` larger than the gallery) ends with ``error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from dqe_cir_pipeline.serving.errors import ServingInputError, StaleIndexError
from dqe_cir_pipeline.serving.query_model import ExportFormatError


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """Where the model and the gallery come from (``search`` and ``serve`` alike)."""
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--model", help="an MLflow model URI, e.g. models:/dqe_cir_synthetic/latest"
    )
    source.add_argument(
        "--checkpoint", help="an export folder (save_pretrained) or a training checkpoint .pt"
    )
    p.add_argument(
        "--gallery",
        help="a gallery index folder or a folder of images (default: the model's own index)",
    )
    p.add_argument("--env", default=None, help="Kedro environment for the defaults")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dqe-cir-pipeline search",
        description="Rank gallery images for a reference image and a modification text.",
    )
    p.add_argument("--image", required=True, help="the reference image file")
    p.add_argument("--text", required=True, help="how the image should change")
    p.add_argument("-k", type=int, default=None, help="results to show (default serving.top_k)")
    add_source_arguments(p)
    p.add_argument("--save-index", help="keep the index of an image-folder gallery here")
    p.add_argument("--grid", help="also write a picture of the answer (PNG)")
    p.add_argument(
        "--exact", action="store_true", help="exact search even where an approximate index exists"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the search command; returns the exit status (0, or 2 on bad input)."""
    args = parser().parse_args(argv)
    from dqe_cir_pipeline.serving.resolve import open_searcher
    from dqe_cir_pipeline.serving.searcher import Query, check_k, check_text, load_reference

    try:
        start = time.perf_counter()
        searcher = open_searcher(
            args.model, args.checkpoint, args.gallery, args.env, args.save_index
        )
        loaded = time.perf_counter()
        k = check_k(args.k, "-k") if args.k is not None else searcher.default_k
        query = Query(load_reference(args.image), check_text(args.text, "--text"), k)
        results = searcher.answer([query], approximate=False if args.exact else None)
        answered = time.perf_counter()
    except (ServingInputError, StaleIndexError, ExportFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"model {searcher.model.version} ({searcher.model.backbone_name}), "
        f"gallery {len(searcher.index)} images; "
        f"load {loaded - start:.2f} s, query {1000 * (answered - loaded):.1f} ms"
    )
    print(f"{'rank':>4}  {'score':>7}  {'image_id':<28}  path")
    for row in results.itertuples(index=False):
        print(f"{row.rank:>4}  {row.score:7.4f}  {row.image_id:<28}  {row.path}")
    if args.grid:
        from dqe_cir_pipeline.serving.grid import save_grid

        out = save_grid(query.image.image, query.text, results, args.grid)
        print(f"grid: {out}")
    return 0


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dqe-cir-pipeline serve",
        description="Serve the search page on this machine: pick or upload a reference "
        "image, type a modification, see the top-k gallery images.",
    )
    add_source_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765)")
    p.add_argument(
        "--examples", type=int, default=200, help="benchmark queries offered on the page"
    )
    return p


def serve_main(argv: Sequence[str] | None = None) -> int:
    """Run the search page until interrupted; returns the exit status (2 on bad input)."""
    args = serve_parser().parse_args(argv)
    import uvicorn

    from dqe_cir_pipeline.serving.resolve import open_searcher, project_examples
    from dqe_cir_pipeline.serving.web import create_app

    try:
        searcher = open_searcher(args.model, args.checkpoint, args.gallery, args.env)
        ids = set(searcher.index.table["image_id"])
        examples = project_examples(ids, args.env, limit=args.examples) if args.examples else []
    except (ServingInputError, StaleIndexError, ExportFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"model {searcher.model.version} ({searcher.model.backbone_name}), "
        f"gallery {len(searcher.index)} images, {len(examples)} benchmark queries; "
        f"open http://{args.host}:{args.port}/  (Ctrl+C stops)",
        flush=True,
    )
    uvicorn.run(create_app(searcher, examples), host=args.host, port=args.port, log_level="warning")
    return 0
