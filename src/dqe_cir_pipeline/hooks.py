"""Hooks for what kedro-mlflow does not do by itself: provenance tags on every run.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs parameters and the
``Mlflow*Dataset`` outputs. These hooks add the tags a reader of the MLflow UI needs to
trust a number: the git commit of the code and a fingerprint of the data it saw.
Nodes never talk to MLflow; only this module and kedro-mlflow do.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

#: Node outputs whose ``fingerprint`` entry becomes the ``dataset_fingerprint`` tag.
FINGERPRINT_OUTPUT = "ingestion_report"


def git_commit(path: Path) -> str:
    """Return the commit of the checkout at ``path`` (with ``-dirty`` when modified)."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


class ProvenanceHooks:
    """Tag the active MLflow run with the git commit and the data fingerprint."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any]) -> None:
        import mlflow

        if mlflow.active_run() is None:
            return
        from dqe_cir_pipeline.settings import PROJECT_ROOT

        mlflow.set_tags(
            {
                "git_commit": git_commit(PROJECT_ROOT),
                "kedro_env": str(run_params.get("env") or "local"),
                "kedro_pipeline": ",".join(run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]),
            }
        )

    @hook_impl
    def after_node_run(self, outputs: dict[str, Any]) -> None:
        report = outputs.get(FINGERPRINT_OUTPUT)
        if not isinstance(report, dict) or "fingerprint" not in report:
            return
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.set_tag("dataset_fingerprint", str(report["fingerprint"]))
