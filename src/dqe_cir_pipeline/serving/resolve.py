"""Finding the model and gallery a search runs on: an MLflow model URI, an export folder,
a checkpoint, or the project's latest run; an index folder or a folder of images.

This is the serving package's glue to Kedro's configuration and MLflow (imported
lazily, only for the sources that need them); the rest of the package uses neither.
The defaults are those of the Kedro project the command runs in (the current folder),
never of the checkout the package was installed from.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from dqe_cir_pipeline.serving.config import ServingConfig
from dqe_cir_pipeline.serving.errors import ServingInputError
from dqe_cir_pipeline.serving.index import (
    GalleryIndex,
    IndexSettings,
    folder_table,
    index_key,
    read_index_meta,
)
from dqe_cir_pipeline.serving.query_model import CONFIG_FILE, QueryModel
from dqe_cir_pipeline.serving.searcher import Searcher

logger = logging.getLogger(__name__)

#: MLflow model URI schemes ``--model`` accepts.
MODEL_URI_SCHEMES = ("models:/", "runs:/", "file:", "mlflow-artifacts:")


def _project(env: str | None) -> Any:
    """The configuration of the Kedro project the command runs in (the current folder)."""
    from dqe_cir_pipeline.config_loader import NotInProjectError, project_config_loader

    try:
        return project_config_loader(env)
    except NotInProjectError as err:
        raise ServingInputError(f"{err}, or give --model") from None


def project_serving_config(env: str | None = None) -> ServingConfig:
    """The ``serving`` block of the project's configuration for ``env``."""
    return ServingConfig(**_project(env)["parameters"].get("serving", {}))


def project_paths(env: str | None = None) -> dict[str, Path]:
    """Where the project's run writes the export folder and the gallery index."""
    catalog = _project(env)["catalog"]
    return {name: Path(catalog[name]["path"]) for name in ("query_model", "gallery_index")}


def load_registered(uri: str) -> tuple[QueryModel, GalleryIndex, ServingConfig]:
    """The query model, gallery index and serving settings inside a logged MLflow model
    (the inference pipeline kedro-mlflow logged at the end of a training run)."""
    # lazy: only an MLflow model URI needs MLflow, which takes seconds to import
    import mlflow
    import mlflow.pyfunc

    if uri.startswith("models:/") and "MLFLOW_TRACKING_URI" not in os.environ:
        mlflow.set_tracking_uri(_project(None)["mlflow"]["server"]["mlflow_tracking_uri"])
    try:
        loaded = mlflow.pyfunc.load_model(uri)
    except mlflow.exceptions.MlflowException as err:
        raise ServingInputError(f"model {uri!r}: {err.message}") from None
    catalog = loaded.unwrap_python_model().loaded_catalog
    return (
        catalog.load("query_model"),
        catalog.load("gallery_index"),
        catalog.load("params:serving"),
    )


def load_query_model(checkpoint: str | Path, env: str | None = None) -> QueryModel:
    """An export folder, or a training checkpoint (``.pt``) on the project's backbone."""
    path = Path(checkpoint)
    if path.is_dir():
        return QueryModel.from_pretrained(path)
    if not path.is_file():
        raise ServingInputError(f"checkpoint {str(path)!r}: no such file or export folder")
    import torch

    from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone

    try:
        ckpt = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ServingInputError(
            f"checkpoint {str(path)!r}: not a readable checkpoint ({err})"
        ) from None
    backbone = BackboneConfig(**_project(env)["parameters"]["backbone"])
    return QueryModel.from_checkpoint(ckpt, load_backbone(backbone))


def load_gallery(
    gallery: str | Path,
    model: QueryModel,
    settings: IndexSettings,
    save_to: str | Path | None = None,
) -> GalleryIndex:
    """An index folder as is, or a folder of images indexed with ``model``.

    With ``save_to``, the index of an image folder is kept there and reused while the
    model and the images stay the same (its key says so); otherwise it is rebuilt.
    """
    root = Path(gallery)
    if read_index_meta(root) is not None:
        return GalleryIndex.load(root, settings)
    table = folder_table(root)
    if save_to is not None:
        saved = read_index_meta(Path(save_to))
        if saved is not None and saved.get("key") == index_key(model, table, settings):
            logger.info("reusing the gallery index in %s", save_to)
            return GalleryIndex.load(save_to, settings)
    index = GalleryIndex.build(model, table, None, settings, source=str(root.resolve()))
    if save_to is not None:
        index.save(save_to)
    return index


def open_searcher(
    model: str | None = None,
    checkpoint: str | Path | None = None,
    gallery: str | Path | None = None,
    env: str | None = None,
    save_index: str | Path | None = None,
) -> Searcher:
    """A :class:`Searcher` from command-line style sources.

    Args:
        model: an MLflow model URI (``models:/dqe_cir_synthetic/latest``, ``runs:/...``):
            its query model, gallery index and serving settings.
        checkpoint: an export folder or a training checkpoint (``.pt``, on the project's
            configured backbone). With neither, the project's last run's export folder.
        gallery: an index folder or a folder of images; default: the model's own index
            (the registered model's, or the project's ``gallery_index``).
        env: the Kedro environment whose configuration gives the defaults.
        save_index: where to keep the index of an image folder for reuse.

    Raises:
        ServingInputError: a source is missing or unreadable.
        StaleIndexError: the index was built by another model version or backbone.
    """
    if model is not None and checkpoint is not None:
        raise ServingInputError("give --model or --checkpoint, not both")
    index: GalleryIndex | None = None
    index_name = "gallery index"
    if model is not None:
        if not model.startswith(MODEL_URI_SCHEMES):
            raise ServingInputError(
                f"--model {model!r} is not an MLflow model URI ({', '.join(MODEL_URI_SCHEMES)}); "
                "use --checkpoint for a file or an export folder"
            )
        query_model, index, cfg = load_registered(model)
        index_name = f"the gallery index of {model}"
    else:
        cfg = project_serving_config(env)
        paths = project_paths(env)
        source = Path(checkpoint) if checkpoint is not None else paths["query_model"]
        if checkpoint is None and not (source / CONFIG_FILE).is_file():
            raise ServingInputError(
                f"no trained model at {source}: run `kedro run --pipelines=train` first, "
                "or give --model / --checkpoint"
            )
        query_model = load_query_model(source, env)
        if gallery is None:
            if read_index_meta(paths["gallery_index"]) is None:
                raise ServingInputError(
                    f"no gallery index at {paths['gallery_index']}: run "
                    "`kedro run --pipelines=serving` or give --gallery"
                )
            index = GalleryIndex.load(paths["gallery_index"], IndexSettings.from_config(cfg))
            index_name = f"gallery index {paths['gallery_index']}"
    settings = IndexSettings.from_config(cfg)
    if gallery is not None:
        index = load_gallery(gallery, query_model, settings, save_index)
        index_name = f"gallery {gallery}"
    assert index is not None
    return Searcher(
        query_model, index, cfg.exclude_reference, cfg.batch_size, index_name, cfg.top_k
    )


@functools.lru_cache(maxsize=4)
def _cached_searcher(
    model: str | None, checkpoint: str | None, gallery: str | None, env: str | None
) -> Searcher:
    return open_searcher(model, checkpoint, gallery, env)


def search(
    image: str | Path | bytes | Image.Image,
    text: str,
    k: int = 10,
    *,
    model: str | None = None,
    checkpoint: str | Path | None = None,
    gallery: str | Path | None = None,
    env: str | None = None,
) -> pd.DataFrame:
    """Top-``k`` gallery images for a reference image and a text (for notebooks).

    The model and gallery are loaded once per distinct ``model / checkpoint / gallery /
    env`` and kept for the next calls.

    Example:
        >>> from dqe_cir_pipeline.serving import search
        >>> search("ref.png", "make it red", k=5, model="models:/dqe_cir_synthetic/latest")

    Returns:
        rank, image_id, path, category, score (best first).
    """
    searcher = _cached_searcher(
        model,
        None if checkpoint is None else str(checkpoint),
        None if gallery is None else str(gallery),
        env,
    )
    return searcher.search(image, text, k)


def project_examples(
    gallery_ids: set[str], env: str | None = None, split: str | None = None, limit: int = 200
) -> list[Any]:
    """The benchmark queries the search page offers: the project's ingested triplets of
    the gallery's split (``serving.gallery_split``, else ``evaluation.split``) whose
    targets the gallery holds; empty (with a log line) before ingestion has run."""
    from dqe_cir_pipeline.serving.web import benchmark_examples

    config = _project(env)
    params = config["parameters"]
    split = split or params.get("serving", {}).get("gallery_split") or params["evaluation"]["split"]
    paths = {name: Path(config["catalog"][name]["filepath"]) for name in ("triplets", "images")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        logger.info("no benchmark examples for the page: %s not there yet", ", ".join(missing))
        return []
    triplets = pd.read_parquet(paths["triplets"])
    images = pd.read_parquet(paths["images"], columns=["image_id", "path"])
    return benchmark_examples(triplets, images, gallery_ids, split, limit)
