"""``serving`` (export the query model, index the gallery, keep an input example: part of
``train``) and ``inference`` (answer requests: the MLflow model of every training run)."""

from __future__ import annotations

from typing import Any

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.inference.nodes import (
    answer_queries,
    export_query_model,
    index_gallery,
    make_input_example,
)

#: The request dataset the MLflow model takes (kedro-mlflow's ``input_name``).
INPUT_NAME = "serving_query"
#: What a training run persists for the inference pipeline.
ARTIFACTS = ("query_model", "gallery_index")


def create_pipeline(**kwargs: object) -> Pipeline:
    """``serving``: the trained model and its gallery index, ready to be queried."""
    nodes = [
        Node(
            func=export_query_model,
            inputs=["model_checkpoint", "evaluation_summary", "params:backbone"],
            outputs="query_model",
            name="export_query_model",
        ),
        Node(
            func=index_gallery,
            inputs=[
                "query_model",
                "vit_features",
                "images",
                "params:serving",
                "params:evaluation",
            ],
            outputs="gallery_index",
            name="index_gallery",
        ),
        Node(
            func=make_input_example,
            inputs=["query_rankings", "images", "params:serving"],
            outputs="serving_input_example",
            name="make_input_example",
        ),
    ]
    return Pipeline(
        nodes,
        namespace="serving",
        inputs={
            "model_checkpoint",
            "evaluation_summary",
            "vit_features",
            "images",
            "query_rankings",
        },
        outputs={"query_model", "gallery_index", "serving_input_example"},
        parameters={"params:backbone", "params:serving", "params:evaluation"},
    )


def create_inference_pipeline(**kwargs: object) -> Pipeline:
    """``inference``: one node from a request table to ranked results."""
    node = Node(
        func=answer_queries,
        inputs=[INPUT_NAME, *ARTIFACTS, "params:serving"],
        outputs="serving_predictions",
        name="answer_queries",
    )
    return Pipeline(
        [node],
        namespace="inference",
        inputs={INPUT_NAME, *ARTIFACTS},
        outputs={"serving_predictions"},
        parameters={"params:serving"},
    )


def request_signature() -> Any:
    """The MLflow model's signature: the request and answer tables of
    :mod:`dqe_cir_pipeline.serving.searcher`."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "text"),
            ColSpec("string", "image_b64", required=False),
            ColSpec("string", "image_path", required=False),
            ColSpec("long", "k", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("long", "query"),
            ColSpec("long", "rank"),
            ColSpec("string", "image_id"),
            ColSpec("string", "path"),
            ColSpec("string", "category"),
            ColSpec("double", "score"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def log_model_kwargs() -> dict[str, Any]:
    """What kedro-mlflow passes to ``mlflow.pyfunc.log_model`` (``hooks.serving`` adds the
    run's input example, the registered model name and the requirements)."""
    return {"name": "model", "signature": request_signature()}
