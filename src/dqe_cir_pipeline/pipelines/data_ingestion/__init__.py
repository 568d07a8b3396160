"""Data ingestion: generate (embedded default) or locate a benchmark, read it, check it."""

from dqe_cir_pipeline.pipelines.data_ingestion.pipeline import create_pipeline

__all__ = ["create_pipeline"]
