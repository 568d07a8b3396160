"""``data_ingestion``: benchmark source -> canonical Parquet tables + quarantine."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.pipelines.data_ingestion.nodes import (
    ingest_benchmark,
    prepare_benchmark_source,
    validate_ingestion,
)


def create_pipeline(**kwargs: object) -> Pipeline:
    nodes = [
        Node(
            func=prepare_benchmark_source,
            inputs="params:data",
            outputs="benchmark_source",
            name="prepare_benchmark_source",
        ),
        Node(
            func=ingest_benchmark,
            inputs=["benchmark_source", "params:data"],
            outputs=["images", "triplets", "quarantine"],
            name="ingest_benchmark",
        ),
        Node(
            func=validate_ingestion,
            inputs=["images", "triplets", "quarantine", "params:data"],
            outputs=["ingestion_report", "ingestion_metrics"],
            name="validate_ingestion",
        ),
    ]
    return Pipeline(
        nodes,
        namespace="data_ingestion",
        outputs={
            "benchmark_source",
            "images",
            "triplets",
            "quarantine",
            "ingestion_report",
            "ingestion_metrics",
        },
        parameters={"params:data"},
    )
