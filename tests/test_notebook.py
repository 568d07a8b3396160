"""The exploration notebook runs headless against a fresh ``test``-env run.

The suite's shared ``kedro run --env test --pipeline=train`` (the session fixture
``kedro_test_run`` in ``tests/conftest.py``; about a minute on two CPU cores) writes every
catalog output to a temporary data root; the notebook is then executed with nbclient on
the venv's own ``python3`` kernel, reading that run through the Kedro IPython extension.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "explore.ipynb"

pytestmark = pytest.mark.slow


def _ensure_python3_kernel(root: Path, mp: pytest.MonkeyPatch) -> None:
    """Make ``python3`` resolve to this interpreter's ipykernel without touching globals.

    ipykernel in the venv normally provides it (``<venv>/share/jupyter/kernels``); if
    not, a kernelspec is written under ``root`` and ``JUPYTER_PATH`` points at it.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
        return
    except NoSuchKernel:
        pass
    spec_dir = root / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test venv)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    mp.setenv("JUPYTER_PATH", str(root / "jupyter"))


@pytest.fixture(scope="module")
def executed_notebook(
    kedro_test_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[nbformat.NotebookNode]:
    """Execute the notebook on the outputs of the suite's shared ``test``-env run.

    ``kedro_test_run`` (tests/conftest.py) ran ``kedro run --env test --pipeline=train``
    once into a temporary data root and MLflow store; the kernel inherits the same
    environment variables, so the notebook's catalog reads exactly that run.
    """
    assert (kedro_test_run["data"] / "07_model_output" / "query_rankings.parquet").exists()
    root = tmp_path_factory.mktemp("notebook_kernel")
    with pytest.MonkeyPatch.context() as mp:
        for key in (
            "DQE_DATA_ROOT",
            "MLFLOW_TRACKING_URI",
            "DQE_MLFLOW_ARTIFACTS",
            "HF_HUB_OFFLINE",
        ):
            mp.setenv(key, kedro_test_run["env"][key])
        mp.setenv("DQE_PROJECT_PATH", str(REPO))
        mp.setenv("DQE_KEDRO_ENV", "test")
        _ensure_python3_kernel(root, mp)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(
            nb,
            kernel_name="python3",
            timeout=600,
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        try:
            client.execute()
        except nbclient.exceptions.CellExecutionError as err:  # keep the cell's traceback
            pytest.fail(f"notebook cell failed:\n{err}")
        yield nb


def _stdout(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("name") == "stdout")


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def test_no_cell_errored(executed_notebook: nbformat.NotebookNode) -> None:
    for cell in _code_cells(executed_notebook):
        errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, (
            f"{cell.source[:80]!r}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
        )
        assert cell.get("execution_count") is not None, f"cell did not run: {cell.source[:80]!r}"


def test_kernel_is_this_venv(executed_notebook: nbformat.NotebookNode) -> None:
    first = _stdout(_code_cells(executed_notebook)[0])
    line = next(ln for ln in first.splitlines() if ln.startswith("python: "))
    assert Path(line.removeprefix("python: ")).resolve() == Path(sys.executable).resolve()


def test_metrics_cell_lists_every_model(executed_notebook: nbformat.NotebookNode) -> None:
    cell = next(
        c for c in _code_cells(executed_notebook) if 'catalog.load("evaluation_table")' in c.source
    )
    rows = {ln.split()[0] for ln in _stdout(cell).splitlines() if ln.strip()}
    assert {"dqe_cir", "zero_shot", "text_blind"} <= rows
    dqe_line = next(ln for ln in _stdout(cell).splitlines() if ln.startswith("dqe_cir"))
    values = [float(v) for v in dqe_line.split()[1:]]
    assert values and all(0.0 <= v <= 100.0 for v in values)


def test_figures_rendered(executed_notebook: nbformat.NotebookNode) -> None:
    images = [
        o
        for c in _code_cells(executed_notebook)
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    # edit-type bars, training curves, qualitative grid
    assert len(images) >= 3


def test_outputs_are_free_of_warnings_and_log_noise(
    executed_notebook: nbformat.NotebookNode,
) -> None:
    """What the notebook shows is its results: no warnings and no log lines (Kedro's
    rich handler shows log records as display outputs, hence the look at every kind)."""
    noise = []
    for cell in _code_cells(executed_notebook):
        for out in cell.get("outputs", []):
            text = out.get("text", "") or out.get("data", {}).get("text/plain", "")
            if out.get("name") == "stderr" and text.strip():
                noise.append(f"{cell.source[:50]!r} stderr: {text[:300]!r}")
            elif re.search(r"\b(WARNING|INFO|DEBUG)\b|Warning\b", text):
                noise.append(f"{cell.source[:50]!r}: {text[:300]!r}")
    assert not noise, "\n".join(noise)
