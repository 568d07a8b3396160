"""Nodes of the ``serving`` pipeline (export, gallery index, input example) and of the
``inference`` pipeline (answer queries), which kedro-mlflow logs as the MLflow model."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pandas as pd

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.model.evaluate import EvaluationConfig
from dqe_cir_pipeline.serving.config import ServingConfig
from dqe_cir_pipeline.serving.errors import ServingInputError
from dqe_cir_pipeline.serving.images import encode_image_b64
from dqe_cir_pipeline.serving.index import (
    GalleryIndex,
    GalleryIndexJob,
    IndexSettings,
    folder_table,
    gallery_table,
    index_key,
)
from dqe_cir_pipeline.serving.query_model import QueryModel
from dqe_cir_pipeline.serving.searcher import Searcher

logger = logging.getLogger(__name__)

#: Headline metrics copied into the model card (the evaluation's ``dqe_cir`` row).
CARD_METRICS = ("recall@1", "recall@5", "recall@10", "recall@50", "recall_subset@1", "avg")


def export_query_model(
    model_checkpoint: dict[str, Any],
    evaluation_summary: dict[str, Any],
    backbone: BackboneConfig,
) -> QueryModel:
    """The trained query model, with what its model card says about training."""
    data = model_checkpoint.get("data", {})
    metrics = evaluation_summary.get("models", {}).get("dqe_cir", {})
    info = {
        "dataset": evaluation_summary.get("dataset"),
        "fingerprint": data.get("fingerprint"),
        "selection_split": data.get("selection_split"),
        "epoch": model_checkpoint.get("epoch"),
        "split": evaluation_summary.get("split"),
        "queries": evaluation_summary.get("queries"),
        "gallery": evaluation_summary.get("gallery"),
        "metrics": {k: float(metrics[k]) for k in CARD_METRICS if k in metrics},
    }
    return QueryModel.from_checkpoint(model_checkpoint, load_backbone(backbone), "cpu", info)


def benchmark_gallery(images: pd.DataFrame, split: str) -> pd.DataFrame:
    """The images of ``split``, one row per image id."""
    rows = images[images["split"] == split]
    if rows.empty:
        raise ServingInputError(
            f"the gallery split {split!r} (serving.gallery_split, else evaluation.split) "
            "has no images "
            f"(splits: {sorted(set(images['split']))})"
        )
    return gallery_table(rows.drop_duplicates("image_id"))


def index_gallery(
    query_model: QueryModel,
    vit_features: FeatureCache,
    images: pd.DataFrame,
    serving: ServingConfig,
    evaluation: EvaluationConfig,
) -> GalleryIndexJob:
    """The gallery index to keep: the benchmark split's images (``serving.gallery_split``,
    else the evaluation's reported split; from the feature cache) or
    ``serving.gallery_folder``'s; built only when its key differs from the saved one."""
    settings = IndexSettings.from_config(serving)
    if serving.gallery_folder:
        table = folder_table(serving.gallery_folder)
        features, source = None, serving.gallery_folder
    else:
        split = serving.gallery_split or evaluation.split
        table = benchmark_gallery(images, split)
        features, source = vit_features, f"split {split}"
    key = index_key(query_model, table, settings)

    def build() -> GalleryIndex:
        return GalleryIndex.build(
            query_model, table, features, settings, serving.batch_size, source=source
        )

    return GalleryIndexJob(key=key, build=build, description={"source": source})


def make_input_example(
    query_rankings: pd.DataFrame, images: pd.DataFrame, serving: ServingConfig
) -> pd.DataFrame:
    """A request the MLflow model is logged with: one evaluated query the model ranks
    right (its target first), the reference image inlined as base64."""
    right = query_rankings[query_rankings["rank"] == 0]
    row = (right if len(right) else query_rankings).iloc[0]
    paths = images.drop_duplicates("image_id").set_index("image_id")["path"]
    return pd.DataFrame(
        {
            "text": [str(row["text"])],
            "image_b64": [encode_image_b64(paths[row["reference_id"]])],
            "k": [int(serving.top_k)],
        }
    )


def answer_queries(
    serving_query: pd.DataFrame,
    query_model: QueryModel,
    gallery_index: GalleryIndex,
    serving: ServingConfig,
) -> pd.DataFrame:
    """Ranked gallery images for each request row (``serving.searcher`` documents both
    tables); refuses an index another model version or backbone built."""
    index = dataclasses.replace(gallery_index, settings=IndexSettings.from_config(serving))
    searcher = Searcher(
        query_model,
        index,
        serving.exclude_reference,
        serving.batch_size,
        "the model's gallery index",
        serving.top_k,
    )
    return searcher.answer_request(serving_query, serving.top_k)
