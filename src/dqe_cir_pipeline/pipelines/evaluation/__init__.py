"""Evaluation: metrics, plots and qualitative grids for a checkpoint or zero-shot."""

from dqe_cir_pipeline.pipelines.evaluation.pipeline import (
    create_pipeline,
    create_submission_pipeline,
    create_zero_shot_pipeline,
)

__all__ = ["create_pipeline", "create_submission_pipeline", "create_zero_shot_pipeline"]
