"""``training``: the GPU node that trains DQE-CIR from cached features, and its curves."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.training.nodes import plot_training_curves, train_model


def create_pipeline(**kwargs: object) -> Pipeline:
    nodes = [
        Node(
            func=train_model,
            inputs=[
                "vit_features",
                "triplets",
                "images",
                "initial_negatives",
                "backbone_info",
                "params:backbone",
                "params:training",
                "params:mining",
                "params:evaluation",
                "params:runtime",
            ],
            outputs=["model_checkpoint", "training_history", "training_metrics"],
            name="train_dqe_cir",
            tags=["compute"],
        ),
        Node(
            func=plot_training_curves,
            inputs="training_history",
            outputs="training_curves_plot",
            name="plot_training_curves",
            tags=["plots"],
        ),
    ]
    return Pipeline(
        nodes,
        namespace="training",
        tags=["training"],
        inputs={"vit_features", "triplets", "images", "initial_negatives", "backbone_info"},
        outputs={
            "model_checkpoint",
            "training_history",
            "training_metrics",
            "training_curves_plot",
        },
        parameters={
            "params:backbone",
            "params:training",
            "params:mining",
            "params:evaluation",
            "params:runtime",
        },
    )
