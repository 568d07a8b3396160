"""Project pipelines.

``train`` (also the default) is the whole job: generate/locate data -> ingest -> extract
ViT features -> mine initial negatives -> train -> evaluate. Every stage is also its
own pipeline; re-runs reuse what is already computed (the feature cache, the tiny
backbone, the generated benchmark).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from dqe_cir_pipeline.pipelines import (
    data_ingestion,
    embedding_extraction,
    evaluation,
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
    full = ingestion + extraction + mining + train + evaluate
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
    }
