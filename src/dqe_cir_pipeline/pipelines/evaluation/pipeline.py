"""``evaluation`` (a trained checkpoint) and ``zero_shot`` (no training at all)."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from dqe_cir_pipeline.pipelines.evaluation.nodes import (
    evaluate_checkpoint,
    evaluate_zero_shot,
    write_cirr_submission,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(
                evaluate_checkpoint,
                [
                    "model_checkpoint",
                    "vit_features",
                    "triplets",
                    "images",
                    "params:backbone",
                    "params:evaluation",
                    "params:runtime",
                ],
                [
                    "evaluation_table",
                    "evaluation_summary",
                    "evaluation_metrics",
                    "query_rankings",
                    "recall_curves_plot",
                    "edit_type_plot",
                    "attribute_weights_plot",
                    "qualitative_successes_plot",
                    "qualitative_failures_plot",
                ],
                name="evaluate_checkpoint",
            )
        ]
    )


def create_zero_shot_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(
                evaluate_zero_shot,
                [
                    "vit_features",
                    "triplets",
                    "images",
                    "params:backbone",
                    "params:training",
                    "params:evaluation",
                    "params:runtime",
                ],
                ["zero_shot_table", "zero_shot_summary", "zero_shot_metrics"],
                name="evaluate_zero_shot",
            )
        ]
    )


def create_submission_pipeline(**kwargs: object) -> Pipeline:
    """CIRR test1: the evaluation server's two JSON files from the best checkpoint."""
    return pipeline(
        [
            node(
                write_cirr_submission,
                [
                    "model_checkpoint",
                    "vit_features",
                    "triplets",
                    "images",
                    "params:backbone",
                    "params:evaluation",
                    "params:runtime",
                ],
                ["cirr_submission_recall", "cirr_submission_subset"],
                name="write_cirr_submission",
            )
        ]
    )
