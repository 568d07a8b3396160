"""Deployment through kedro-airflow: ``kedro airflow create`` makes a valid DAG file.

Airflow itself is not installed here (nor needed): the generated file is checked as
Python source - it parses, and its tasks and dependencies mirror the ``train``
pipeline, one Airflow task per Kedro node.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kedro_airflow")

REPO = Path(__file__).resolve().parents[1]
TRAIN_NODES = {
    "data_ingestion.prepare_benchmark_source",
    "data_ingestion.ingest_benchmark",
    "data_ingestion.validate_ingestion",
    "data_ingestion.publish_tables",
    "embedding_extraction.prepare_backbone",
    "embedding_extraction.extract_vit_features",
    "embedding_extraction.summarize_extraction",
    "negative_mining.mine_initial_negatives",
    "negative_mining.summarize_mining",
    "negative_mining.plot_delta_distribution",
    "training.train_dqe_cir",
    "training.plot_training_curves",
    "evaluation.evaluate_checkpoint",
    "evaluation.plot_recall_curves",
    "evaluation.plot_edit_types",
    "evaluation.plot_attribute_weights",
    "evaluation.plot_qualitative_successes",
    "evaluation.plot_qualitative_failures",
    "serving.export_query_model",
    "serving.index_gallery",
    "serving.make_input_example",
}


@pytest.fixture(scope="module")
def dag_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("airflow")
    target = root / "dags"
    env = {
        **os.environ,
        "DQE_DATA_ROOT": str(root / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{(root / 'mlflow.db').as_posix()}",
        "DQE_MLFLOW_ARTIFACTS": (root / "mlartifacts").as_uri(),
        "HF_HUB_OFFLINE": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "kedro",
            "airflow",
            "create",
            "--pipelines=train",
            "--env=test",
            "-t",
            str(target),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    files = sorted(target.glob("*.py"))
    assert len(files) == 1, files
    return files[0]


def _tasks(tree: ast.Module) -> dict[str, list[str]]:
    """``@task(task_id=...)`` functions -> the Kedro node names they run."""
    out: dict[str, list[str]] = {}
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        task_ids = [
            kw.value.value
            for dec in fn.decorator_list
            if isinstance(dec, ast.Call)
            for kw in dec.keywords
            if kw.arg == "task_id" and isinstance(kw.value, ast.Constant)
        ]
        if not task_ids:
            continue
        nodes = [
            elt.value
            for call in ast.walk(fn)
            if isinstance(call, ast.Call)
            for kw in call.keywords
            if kw.arg == "node_names" and isinstance(kw.value, ast.List)
            for elt in kw.value.elts
            if isinstance(elt, ast.Constant)
        ]
        out[task_ids[0]] = nodes
    return out


def _edges(tree: ast.Module) -> set[tuple[str, str]]:
    """``tasks["a"] >> tasks["b"]`` statements -> {("a", "b")}."""
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.RShift):
            sides = [s.slice.value for s in (node.left, node.right) if isinstance(s, ast.Subscript)]
            if len(sides) == 2:
                edges.add((sides[0], sides[1]))
    return edges


def test_dag_is_python_with_one_task_per_node(dag_file: Path) -> None:
    source = dag_file.read_text()
    tree = ast.parse(source, filename=str(dag_file))
    tasks = _tasks(tree)
    assert tasks["training-train-dqe-cir"] == [
        "training.train_dqe_cir"
    ]  # the training node is its own task
    assert {n for nodes in tasks.values() for n in nodes} == TRAIN_NODES
    assert all(len(nodes) == 1 for nodes in tasks.values())
    assert 'env = "test"' in source and 'pipeline_name = "train"' in source


def test_dag_dependencies_follow_the_pipeline(dag_file: Path) -> None:
    edges = _edges(ast.parse(dag_file.read_text()))
    assert ("embedding-extraction-extract-vit-features", "training-train-dqe-cir") in edges
    assert ("negative-mining-mine-initial-negatives", "negative-mining-summarize-mining") in edges
    assert ("negative-mining-summarize-mining", "training-train-dqe-cir") in edges
    assert ("training-train-dqe-cir", "evaluation-evaluate-checkpoint") in edges
    assert ("data-ingestion-prepare-benchmark-source", "data-ingestion-ingest-benchmark") in edges
    # training never runs before the features it reads exist
    assert ("training-train-dqe-cir", "embedding-extraction-extract-vit-features") not in edges
