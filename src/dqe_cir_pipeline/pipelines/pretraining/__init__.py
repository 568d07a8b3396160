"""``pretraining``: BLIP-2 stage 1 of the tiny backbone on described generated scenes."""

from dqe_cir_pipeline.pipelines.pretraining.pipeline import create_pipeline

__all__ = ["create_pipeline"]
