"""``negative_mining``: initial model -> mid-zone negatives per training query."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from dqe_cir_pipeline.pipelines.negative_mining.nodes import mine_initial_negatives


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(
                mine_initial_negatives,
                [
                    "vit_features",
                    "triplets",
                    "images",
                    "params:backbone",
                    "params:training",
                    "params:mining",
                    "params:runtime",
                ],
                ["initial_negatives", "mining_metrics", "delta_distribution_plot"],
                name="mine_initial_negatives",
            )
        ]
    )
