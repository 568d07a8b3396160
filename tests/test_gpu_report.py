"""``benchmarks/gpu_report.py`` and ``gpu_run.sh``: install lists, the figures JSON of a
GPU run, and the device figures' plumbing at tiny sizes on CPU.

The assembly is checked on the H200 device figures the project keeps
(``docs/figures/gpu_bench_h200.json``) and on a smoke report shaped like the one the
``smoke`` step writes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_report.py"


def report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return report_module()


def _smoke_report() -> dict[str, Any]:
    """What the ``smoke`` step writes for one benchmark (figures invented)."""
    return {
        "args": {},
        "benchmarks": {
            "cirr": {
                "data": {"images": 1200},
                "data_seconds": 4.0,
                "kedro_seconds": 95.0,
                "run_id": "abc",
                "nodes": {
                    "embedding_extraction.extract_features": {
                        "seconds": 0.1,
                        "save_seconds": 12.5,
                        "peak_gpu_gib": 6.25,
                        "peak_rss_gib": 9.0,
                    },
                    "training.train_model": {
                        "seconds": 30.0,
                        "peak_gpu_gib": 21.5,
                        "peak_rss_gib": 11.0,
                    },
                },
                "extraction": {"images": 1200, "encode_seconds": 4.0, "images_per_s": 300.0},
                "training": {
                    "epochs": 2,
                    "triplets_per_s_last_epoch": 410.0,
                    "mining_seconds": [0.4, 0.3],
                    "loss": [1.0, 0.9],
                },
                "evaluation": {"queries": 1000, "gallery": 500, "queries_per_s": 250.0},
            }
        },
        "device": "NVIDIA H200",
    }


def test_install_lists_keep_the_machines_torch(report: ModuleType) -> None:
    deps = ["kedro>=1.3,<2", "torch>=2.4", "Kedro_Viz>=12.0", "mlflow>=3.1,<3.18", "numpy>=1.26"]
    installed = {"torch": "2.11.0+cu130", "triton": "3.5.0", "torchvision": None}
    requirements, constraints = report.install_lists(deps, installed, exclude=["kedro-viz"])
    assert requirements == ["kedro>=1.3,<2", "mlflow>=3.1,<3.18", "numpy>=1.26"]
    assert constraints == ["torch==2.11.0+cu130", "triton==3.5.0"]


def test_requirements_come_from_pyproject(report: ModuleType, tmp_path: Path) -> None:
    assert report.main(["requirements", "--out-dir", str(tmp_path), "--exclude", "faiss-cpu"]) == 0
    requirements = (tmp_path / "requirements.txt").read_text().split()
    project = report.project_dependencies(ROOT / "pyproject.toml")
    assert "torch>=2.4" in project and not any(r.startswith("torch") for r in requirements)
    assert not any(r.startswith("faiss") for r in requirements)
    assert set(requirements) == {r for r in project if not r.startswith(("torch", "faiss"))}
    constraints = (tmp_path / "constraints.txt").read_text().split()
    assert any(c.startswith("torch==") for c in constraints)  # this venv has torch


def test_device_slug(report: ModuleType) -> None:
    assert report.device_slug("NVIDIA H200") == "h200"
    assert report.device_slug("NVIDIA H100 80GB HBM3") == "h100_80gb_hbm3"
    assert report.device_slug("") == "unknown"


def test_assemble_computes_the_gpu_path_ratios(report: ModuleType) -> None:
    bench = json.loads((ROOT / "docs/figures/gpu_bench_h200.json").read_text())
    steps = {"device": {"seconds": 61.0, "exit": 0, "time_box_s": 150.0}}
    doc = report.assemble(bench, {"cirr": _smoke_report(), "fashioniq": None}, None, steps)

    ext = bench["sections"]["b_extraction"]
    train = bench["sections"]["c_training_step"]
    assert doc["device"] == "NVIDIA H200"
    assert doc["extraction_end_to_end_over_model_only"] == pytest.approx(
        ext["e2e_images_per_s"] / ext["model_only_images_per_s"]
    )
    assert doc["extraction_end_to_end_over_model_only"] == pytest.approx(0.3244, abs=1e-4)
    # This H200 run predates the prefetched path: the in-loop gather is the figure.
    assert doc["cached_over_recompute_end_to_end"] == pytest.approx(
        train["e2e_cached_triplets_per_s"] / train["e2e_recompute_triplets_per_s"]
    )
    assert doc["mfu_model_only"] == pytest.approx(0.5448, abs=1e-4)
    assert doc["negative_refresh_20k_s"] == pytest.approx(0.7956, abs=1e-4)
    assert {k: t["met"] for k, t in doc["targets"].items()} == {
        "extraction_end_to_end_over_model_only": False,
        "mfu_model_only": False,
        "cached_over_recompute_end_to_end": False,
        "negative_refresh_20k_s": True,
    }
    assert doc["peak_gpu_gib_per_node"] == {
        "cirr": {"embedding_extraction.extract_features": 6.25, "training.train_model": 21.5}
    }
    assert doc["seconds_per_node"]["cirr"]["embedding_extraction.extract_features"] == {
        "run": 0.1,
        "save": 12.5,
    }
    assert doc["smoke"]["cirr"]["extraction_over_device_model_only"] == pytest.approx(
        300.0 / ext["model_only_images_per_s"]
    )
    assert doc["seconds_per_step"] == {"device": 61.0}
    assert doc["smoke_status"] == {"cirr": "ok", "fashioniq": "no report"}
    assert set(doc["missing"]) == {"smoke.fashioniq"}


def test_assemble_prefers_the_prefetched_path_and_reports_what_is_missing(
    report: ModuleType,
) -> None:
    bench = json.loads((ROOT / "docs/figures/gpu_bench_h200.json").read_text())
    bench["sections"]["c_training_step"]["e2e_cached_prefetch_triplets_per_s"] = 421.1
    doc = report.assemble(bench, {}, None, {})
    recompute = bench["sections"]["c_training_step"]["e2e_recompute_triplets_per_s"]
    assert doc["cached_over_recompute_end_to_end"] == pytest.approx(421.1 / recompute)
    assert doc["targets"]["cached_over_recompute_end_to_end"]["met"] is True

    empty = report.assemble(None, {"cirr": None}, None, {})
    assert empty["device"] == "unknown" and empty["mfu_model_only"] is None
    assert empty["targets"]["mfu_model_only"]["met"] is None
    assert {"mfu_model_only", "smoke.cirr", "peak_gpu_gib_per_node"} <= set(empty["missing"])


def test_cli_writes_gpu_smoke_device_json(report: ModuleType, tmp_path: Path) -> None:
    smoke = tmp_path / "smoke_cirr.json"
    smoke.write_text(json.dumps(_smoke_report()))
    steps = tmp_path / "steps.tsv"
    steps.write_text("device\t61\t0\t150\ninstall\t0\tskipped\t5\nsmoke_cirr\t240\t124\t240\n")
    code = report.main(
        [
            "assemble",
            "--device-figures",
            str(ROOT / "docs/figures/gpu_bench_h200.json"),
            "--smoke",
            f"cirr={smoke}",
            "--smoke",
            f"fashioniq={tmp_path / 'absent.json'}",
            "--host-feed",
            str(tmp_path / "absent.json"),
            "--steps",
            str(steps),
            "--out-dir",
            str(tmp_path / "a"),
            "--out-dir",
            str(tmp_path / "b"),
        ]
    )
    assert code == 0
    doc = json.loads((tmp_path / "a" / "gpu_smoke_h200.json").read_text())
    assert doc == json.loads((tmp_path / "b" / "gpu_smoke_h200.json").read_text())
    for key in (
        "extraction_end_to_end_over_model_only",
        "cached_over_recompute_end_to_end",
        "mfu_model_only",
        "peak_gpu_gib_per_node",
        "seconds_per_node",
        "seconds_per_step",
    ):
        assert doc[key], key
    assert doc["steps"]["install"]["exit"] == "skipped"
    assert doc["steps"]["smoke_cirr"] == {"seconds": 240.0, "exit": 124, "time_box_s": 240.0}


def test_gpu_script_parses() -> None:
    proc = subprocess.run(
        ["bash", "-n", str(ROOT / "benchmarks" / "gpu_run.sh")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_device_figures_run_every_section_at_tiny_sizes(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "device", "--tiny", "--device", "cpu", "--workers", "1"]
        + ["--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    sections = doc["sections"]
    assert {k: v["status"] for k, v in sections.items()} == {
        "a_matmul_peak": "ok",
        "d_mining": "ok",
        "b_extraction": "ok",
        "c_training_step": "ok",
    }
    assert doc["kedro_or_mlflow_imported"] == []  # the device runs it before the install
    train = sections["c_training_step"]
    for key in ("bare_cached_triplets_per_s", "e2e_cached_prefetch_triplets_per_s"):
        assert train[key] > 0, key
    assert sections["d_mining"]["mining_shape"] == "1000x1000x16x64"
    assert "b_extraction" in proc.stdout and "e2e cached/recompute" in proc.stdout
    # what the assembly reads from it
    assembled = report_module().assemble(doc, {}, None, {})
    assert assembled["extraction_end_to_end_over_model_only"] > 0
    assert assembled["missing"]["negative_refresh_20k_s"].startswith("mining measured at")
