"""``embedding_extraction``: backbone -> frozen ViT token cache -> extraction report."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.embedding_extraction.nodes import (
    extract_features,
    prepare_backbone,
    summarize_extraction,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    nodes = [
        Node(
            func=prepare_backbone,
            inputs=["triplets", "params:backbone"],
            outputs="backbone_info",
            name="prepare_backbone",
        ),
        Node(
            func=extract_features,
            inputs=[
                "images",
                "backbone_info",
                "params:backbone",
                "params:extraction",
                "params:runtime",
            ],
            outputs="vit_features",
            name="extract_vit_features",
            tags=["compute"],
        ),
        Node(
            func=summarize_extraction,
            inputs=["vit_features", "images"],
            outputs=["extraction_report", "extraction_metrics"],
            name="summarize_extraction",
        ),
    ]
    return Pipeline(
        nodes,
        namespace="embedding_extraction",
        tags=["embedding_extraction"],
        inputs={"triplets", "images"},
        outputs={"backbone_info", "vit_features", "extraction_report", "extraction_metrics"},
        parameters={"params:backbone", "params:extraction", "params:runtime"},
    )
