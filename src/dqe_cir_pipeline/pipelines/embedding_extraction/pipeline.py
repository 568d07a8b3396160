"""``embedding_extraction``: backbone -> frozen ViT token cache -> initial embeddings."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from dqe_cir_pipeline.pipelines.embedding_extraction.nodes import (
    embed_initial_targets,
    extract_features,
    prepare_backbone,
    summarize_extraction,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(prepare_backbone, ["triplets", "params:backbone"], "backbone_info", name="prepare_backbone"),
            node(
                extract_features,
                ["images", "backbone_info", "params:backbone", "params:extraction", "params:runtime"],
                "vit_features",
                name="extract_vit_features",
            ),
            node(
                summarize_extraction,
                ["vit_features", "images"],
                ["extraction_report", "extraction_metrics"],
                name="summarize_extraction",
            ),
            node(
                embed_initial_targets,
                ["vit_features", "images", "params:backbone", "params:training", "params:runtime"],
                "initial_target_embeddings",
                name="embed_initial_targets",
            ),
        ]
    )
