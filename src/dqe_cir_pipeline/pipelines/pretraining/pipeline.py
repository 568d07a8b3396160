"""``pretraining``: described-scene corpus -> stage-1 (ITC + ITM) pretrained tiny BLIP-2."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.pretraining.nodes import (
    prepare_pretraining_corpus,
    pretrain_backbone,
    summarize_pretraining,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    nodes = [
        Node(
            func=prepare_pretraining_corpus,
            inputs=["params:pretraining", "params:data"],
            outputs="pretraining_corpus",
            name="prepare_pretraining_corpus",
        ),
        Node(
            func=pretrain_backbone,
            inputs=[
                "pretraining_corpus",
                "params:backbone",
                "params:pretraining",
                "params:runtime",
            ],
            outputs="pretrained_backbone",
            name="pretrain_backbone",
            tags=["compute"],
        ),
        Node(
            func=summarize_pretraining,
            inputs="pretrained_backbone",
            outputs=["pretraining_metrics", "pretraining_curves_plot"],
            name="summarize_pretraining",
        ),
    ]
    return Pipeline(
        nodes,
        namespace="pretraining",
        tags=["pretraining"],
        outputs={
            "pretraining_corpus",
            "pretrained_backbone",
            "pretraining_metrics",
            "pretraining_curves_plot",
        },
        parameters={"params:pretraining", "params:data", "params:backbone", "params:runtime"},
    )
