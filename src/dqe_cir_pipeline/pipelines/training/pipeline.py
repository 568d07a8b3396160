"""``training``: the GPU node that trains DQE-CIR from cached features."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from dqe_cir_pipeline.pipelines.training.nodes import train_model


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(
                train_model,
                [
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
                ["model_checkpoint", "training_history", "training_metrics", "training_curves_plot"],
                name="train_dqe_cir",
            )
        ]
    )
