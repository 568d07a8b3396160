"""Embedding extraction: frozen ViT tokens into the feature cache, initial embeddings."""

from dqe_cir_pipeline.pipelines.embedding_extraction.pipeline import create_pipeline

__all__ = ["create_pipeline"]
