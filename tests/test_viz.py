"""``kedro viz build`` works offline and its static API shows the project's DAG.

kedro-viz writes ``build/`` into the current directory (the path is fixed in
``kedro_viz.integrations.deployment.local_deployer``), so the command runs in a
temporary copy of the project (``pyproject.toml``, ``conf/`` without the user's
``conf/local`` content, ``src/``): parallel test runs never share a ``build/`` folder
and the checkout stays untouched. Building needs no data: nodes are not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("kedro_viz")

REPO = Path(__file__).resolve().parents[1]

EXPECTED_PIPELINES = {
    "data_ingestion": {
        "prepare_benchmark_source",
        "ingest_benchmark",
        "validate_ingestion",
        "publish_tables",
    },
    "embedding_extraction": {"prepare_backbone", "extract_vit_features", "summarize_extraction"},
    "negative_mining": {
        "mine_initial_negatives",
        "summarize_mining",
        "plot_delta_distribution",
    },
    "training": {"train_dqe_cir", "plot_training_curves"},
    "evaluation": {
        "evaluate_checkpoint",
        "plot_recall_curves",
        "plot_edit_types",
        "plot_attribute_weights",
        "plot_qualitative_successes",
        "plot_qualitative_failures",
    },
    "zero_shot": {"evaluate_zero_shot"},
    "serving": {"export_query_model", "index_gallery", "make_input_example"},
}


def _copy_project(dst: Path) -> Path:
    """The files ``kedro viz build`` reads, copied to ``dst`` (caches left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copy2(REPO / "pyproject.toml", dst / "pyproject.toml")
    if (REPO / ".telemetry").exists():
        shutil.copy2(REPO / ".telemetry", dst / ".telemetry")
    shutil.copytree(REPO / "conf", dst / "conf", ignore=shutil.ignore_patterns("local"))
    (dst / "conf" / "local").mkdir()
    shutil.copytree(REPO / "src", dst / "src", ignore=ignore)
    return dst


@pytest.fixture(scope="module")
def viz_api(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the static site once; return its ``api/`` folder."""
    project = _copy_project(tmp_path_factory.mktemp("viz_project"))
    env = {
        **os.environ,
        "DQE_DATA_ROOT": str(project / "data"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{(project / 'mlflow.db').as_posix()}",
        "DQE_MLFLOW_ARTIFACTS": (project / "mlartifacts").as_uri(),
        "HF_HUB_OFFLINE": "1",
        "KEDRO_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "kedro", "viz", "build", "--include-previews"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    api = project / "build" / "api"
    assert (api / "main").is_file(), sorted(p.name for p in (project / "build").iterdir())
    return api


def _task_names(payload: dict) -> set[str]:
    return {n["name"] for n in payload["nodes"] if n["type"] == "task"}


def test_main_lists_the_full_dag(viz_api: Path) -> None:
    main = json.loads((viz_api / "main").read_text())
    tasks = _task_names(main)
    assert {"train_dqe_cir", "extract_vit_features"} <= tasks
    # the default view is the whole `train` job: every node of every stage but zero-shot
    expected = set().union(*(v for k, v in EXPECTED_PIPELINES.items() if k != "zero_shot"))
    assert tasks == expected
    data = {n["name"] for n in main["nodes"] if n["type"] == "data"}
    assert {"vit_features", "model_checkpoint", "evaluation_table"} <= data
    assert main["edges"], "a DAG without edges"


def test_every_pipeline_is_listed_with_its_nodes(viz_api: Path) -> None:
    main = json.loads((viz_api / "main").read_text())
    listed = {p["id"] for p in main["pipelines"]}
    assert set(EXPECTED_PIPELINES) | {"train", "__default__"} <= listed
    for name, nodes in EXPECTED_PIPELINES.items():
        payload = json.loads((viz_api / "pipelines" / name).read_text())
        assert _task_names(payload) == nodes, name


def test_datasets_carry_layers_and_nodes_tags(viz_api: Path) -> None:
    main = json.loads((viz_api / "main").read_text())
    # the bands kedro viz draws, in data-flow order (an empty list: the layers form a cycle)
    assert main["layers"] == [
        "raw",
        "intermediate",
        "feature",
        "model_input",
        "models",
        "model_output",
        "reporting",
        "serving",
    ]
    layer = {n["name"]: n.get("layer") for n in main["nodes"] if n["type"] == "data"}
    assert layer["images"] == "intermediate"
    assert layer["vit_features"] == "feature"
    assert layer["model_checkpoint"] == "models"
    tags = {t["id"] for t in main["tags"]}
    assert {"training", "evaluation", "plots", "compute"} <= tags
    by_node = {n["name"]: set(n.get("tags", [])) for n in main["nodes"] if n["type"] == "task"}
    assert {"training", "compute"} <= by_node["train_dqe_cir"]
    assert "plots" in by_node["plot_recall_curves"]
