"""Serving: export the trained model and index the gallery (``serving``), and answer
requests (``inference``, logged as the MLflow model of every training run)."""

from dqe_cir_pipeline.pipelines.inference.pipeline import (
    INPUT_NAME,
    create_inference_pipeline,
    create_pipeline,
    log_model_kwargs,
)

__all__ = ["INPUT_NAME", "create_inference_pipeline", "create_pipeline", "log_model_kwargs"]
