"""``negative_mining``: initial model -> mid-zone negatives per training query.

``mine_initial_negatives`` describes the pass by a key; ``mined_negatives`` mines only
when nothing is stored under it; ``summarize_mining`` hands the table to training and
reports the metrics (also of reused negatives).
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.negative_mining.nodes import (
    mine_initial_negatives,
    plot_delta_distribution,
    summarize_mining,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    nodes = [
        Node(
            func=mine_initial_negatives,
            inputs=[
                "vit_features",
                "triplets",
                "images",
                "params:backbone",
                "params:training",
                "params:mining",
                "params:runtime",
            ],
            outputs="mined_negatives",
            name="mine_initial_negatives",
            tags=["compute"],
        ),
        Node(
            func=summarize_mining,
            inputs="mined_negatives",
            outputs=["initial_negatives", "mining_metrics", "delta_sample"],
            name="summarize_mining",
        ),
        Node(
            func=plot_delta_distribution,
            inputs=["delta_sample", "initial_negatives"],
            outputs="delta_distribution_plot",
            name="plot_delta_distribution",
            tags=["plots"],
        ),
    ]
    return Pipeline(
        nodes,
        namespace="negative_mining",
        tags=["negative_mining"],
        inputs={"vit_features", "triplets", "images"},
        outputs={
            "mined_negatives",
            "initial_negatives",
            "mining_metrics",
            "delta_distribution_plot",
        },
        parameters={"params:backbone", "params:training", "params:mining", "params:runtime"},
    )
