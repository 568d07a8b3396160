"""``evaluation`` (a trained checkpoint), ``zero_shot`` (no training) and ``cirr_submission``."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.evaluation import plots
from dqe_cir_pipeline.pipelines.evaluation.nodes import (
    evaluate_checkpoint,
    evaluate_zero_shot,
    write_cirr_submission,
)

_MODEL_INPUTS = ["model_checkpoint", "vit_features", "triplets", "images"]
_DATA_INPUTS = {"model_checkpoint", "vit_features", "triplets", "images"}


def create_pipeline(**kwargs: object) -> Pipeline:
    nodes = [
        Node(
            func=evaluate_checkpoint,
            inputs=[*_MODEL_INPUTS, "params:backbone", "params:evaluation", "params:runtime"],
            outputs=[
                "evaluation_table",
                "evaluation_summary",
                "evaluation_metrics",
                "query_rankings",
            ],
            name="evaluate_checkpoint",
            tags=["compute"],
        ),
        Node(
            func=plots.recall_curves,
            inputs="evaluation_table",
            outputs="recall_curves_plot",
            name="plot_recall_curves",
            tags=["plots"],
        ),
        Node(
            func=plots.edit_type_bars,
            inputs="evaluation_table",
            outputs="edit_type_plot",
            name="plot_edit_types",
            tags=["plots"],
        ),
        Node(
            func=plots.attribute_weights,
            inputs="query_rankings",
            outputs="attribute_weights_plot",
            name="plot_attribute_weights",
            tags=["plots"],
        ),
        Node(
            func=plots.qualitative_successes,
            inputs=["query_rankings", "images", "params:evaluation"],
            outputs="qualitative_successes_plot",
            name="plot_qualitative_successes",
            tags=["plots"],
        ),
        Node(
            func=plots.qualitative_failures,
            inputs=["query_rankings", "images", "params:evaluation"],
            outputs="qualitative_failures_plot",
            name="plot_qualitative_failures",
            tags=["plots"],
        ),
    ]
    return Pipeline(
        nodes,
        namespace="evaluation",
        tags=["evaluation"],
        inputs=_DATA_INPUTS,
        outputs={
            "evaluation_table",
            "evaluation_summary",
            "evaluation_metrics",
            "query_rankings",
            "recall_curves_plot",
            "edit_type_plot",
            "attribute_weights_plot",
            "qualitative_successes_plot",
            "qualitative_failures_plot",
        },
        parameters={"params:backbone", "params:evaluation", "params:runtime"},
    )


def create_zero_shot_pipeline(**kwargs: object) -> Pipeline:
    node = Node(
        func=evaluate_zero_shot,
        inputs=[
            "vit_features",
            "triplets",
            "images",
            "params:backbone",
            "params:training",
            "params:evaluation",
            "params:runtime",
        ],
        outputs=["zero_shot_table", "zero_shot_summary", "zero_shot_metrics"],
        name="evaluate_zero_shot",
        tags=["compute"],
    )
    return Pipeline(
        [node],
        namespace="zero_shot",
        tags=["zero_shot"],
        inputs={"vit_features", "triplets", "images"},
        outputs={"zero_shot_table", "zero_shot_summary", "zero_shot_metrics"},
        parameters={"params:backbone", "params:training", "params:evaluation", "params:runtime"},
    )


def create_submission_pipeline(**kwargs: object) -> Pipeline:
    """CIRR test1: the evaluation server's two JSON files from the best checkpoint."""
    node = Node(
        func=write_cirr_submission,
        inputs=[*_MODEL_INPUTS, "params:backbone", "params:evaluation", "params:runtime"],
        outputs=["cirr_submission_recall", "cirr_submission_subset"],
        name="write_cirr_submission",
    )
    return Pipeline(
        [node],
        namespace="cirr_submission",
        tags=["cirr_submission"],
        inputs=_DATA_INPUTS,
        outputs={"cirr_submission_recall", "cirr_submission_subset"},
        parameters={"params:backbone", "params:evaluation", "params:runtime"},
    )
