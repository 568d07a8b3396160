"""Training: DQE-CIR on cached ViT tokens with refreshed mid-zone negatives."""

from dqe_cir_pipeline.pipelines.training.pipeline import create_pipeline

__all__ = ["create_pipeline"]
