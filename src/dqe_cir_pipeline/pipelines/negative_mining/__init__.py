"""Negative mining: target-relative mid-zone negatives from the initial model."""

from dqe_cir_pipeline.pipelines.negative_mining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
