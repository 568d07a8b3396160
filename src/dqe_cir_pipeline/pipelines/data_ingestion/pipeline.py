"""``data_ingestion``: benchmark source -> canonical Parquet tables + quarantine.

``ingest_benchmark`` saves the quarantine table at once and keeps images and triplets
in memory (image files unchanged since the record of the last check are not read
again); ``validate_ingestion`` writes the verdict (report and MLflow metrics, also
when it fails); ``publish_tables`` writes the tables the later stages read only when
the verdict passed, and otherwise fails the run.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from dqe_cir_pipeline.data_sources.ingest import prepare_benchmark_source
from dqe_cir_pipeline.pipelines.data_ingestion.nodes import (
    ingest_benchmark,
    publish_tables,
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
            inputs=["benchmark_source", "params:data", "image_check_record"],
            outputs=["ingested_images", "ingested_triplets", "quarantine", "image_checks"],
            name="ingest_benchmark",
        ),
        Node(
            func=validate_ingestion,
            inputs=[
                "ingested_images",
                "ingested_triplets",
                "quarantine",
                "image_checks",
                "params:data",
            ],
            outputs=["ingestion_report", "ingestion_metrics", "verdict"],
            name="validate_ingestion",
        ),
        Node(
            func=publish_tables,
            inputs=["ingested_images", "ingested_triplets", "verdict"],
            outputs=["images", "triplets"],
            name="publish_tables",
        ),
    ]
    return Pipeline(
        nodes,
        namespace="data_ingestion",
        tags=["data_ingestion"],
        inputs={"image_check_record"},
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
