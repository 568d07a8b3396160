"""Project pipelines.

``train`` (also the default) is the whole job: generate/locate data -> ingest -> extract
ViT features -> mine initial negatives -> train -> evaluate -> export the query model and
index the gallery. Every stage is also its own pipeline; re-runs reuse what is already
computed (the feature cache, the tiny backbone, the generated benchmark, the index).

``train`` is bound to ``inference`` with kedro-mlflow's ``pipeline_ml_factory``: every
training run logs the inference pipeline as an MLflow pyfunc model and registers it
(``serving.registered_model_name``; see docs/serving.md).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline
from kedro_mlflow.pipeline import pipeline_ml_factory

from dqe_cir_pipeline.pipelines import (
    data_ingestion,
    embedding_extraction,
    evaluation,
    inference,
    negative_mining,
    pretraining,
    training,
)


def register_pipelines() -> dict[str, Pipeline]:
    ingestion = data_ingestion.create_pipeline()
    extraction = embedding_extraction.create_pipeline()
    mining = negative_mining.create_pipeline()
    train = training.create_pipeline()
    evaluate = evaluation.create_pipeline()
    zero_shot = evaluation.create_zero_shot_pipeline()
    serving = inference.create_pipeline()
    answer = inference.create_inference_pipeline()
    full = pipeline_ml_factory(
        training=ingestion + extraction + mining + train + evaluate + serving,
        inference=answer,
        input_name=inference.INPUT_NAME,
        log_model_kwargs=inference.log_model_kwargs(),
    )
    return {
        "__default__": full,
        "train": full,
        "data_ingestion": ingestion,
        "embedding_extraction": extraction,
        "negative_mining": mining,
        "training": train,
        "evaluation": evaluate,
        "zero_shot": zero_shot,
        "zero_shot_full": ingestion + extraction + zero_shot,
        "cirr_submission": evaluation.create_submission_pipeline(),
        "pretraining": pretraining.create_pipeline(),
        "serving": serving,
        "inference": answer,
    }
