"""``data_ingestion``: benchmark source -> canonical Parquet tables + quarantine."""

from __future__ import annotations

from kedro.pipeline import Pipeline, node, pipeline

from dqe_cir_pipeline.pipelines.data_ingestion.nodes import (
    ingest_benchmark,
    prepare_benchmark_source,
    validate_ingestion,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    return pipeline(
        [
            node(prepare_benchmark_source, "params:data", "benchmark_source", name="prepare_benchmark_source"),
            node(
                ingest_benchmark,
                ["benchmark_source", "params:data"],
                ["images", "triplets", "quarantine"],
                name="ingest_benchmark",
            ),
            node(
                validate_ingestion,
                ["images", "triplets", "quarantine", "params:data"],
                ["ingestion_report", "ingestion_metrics"],
                name="validate_ingestion",
            ),
        ]
    )
