"""The real-data smoke run (``benchmarks/gpu_report.py smoke``) in its CPU form: both
real-data environments end to end.

It drives ``kedro run --env cirr`` and ``--env fashioniq`` (the envs a user runs on the
real data) over placeholder trees with the real annotation layout; here with the tiny
backbone on CPU at 1 % of the real val sizes. On a GPU the same command runs the
full-size random BLIP-2 (``--size full``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _load(name: str) -> ModuleType:
    if str(ROOT / "benchmarks") not in sys.path:  # the scripts import their siblings
        sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_every_stage_of_both_benchmarks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _load("gpu_report").main(
        [
            "smoke",
            "--work",
            str(tmp_path),
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--scale",
            "0.01",
            "--train-queries",
            "48",
            "--image-size",
            "48",
            "--workers",
            "2",
            "--extraction-batch",
            "64",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "smoke_report.json").read_text())
    assert report["benchmarks"].keys() == {"cirr", "fashioniq"}
    for name, rep in report["benchmarks"].items():
        assert f"== {name}:" in printed
        for node in (
            "data_ingestion.ingest_benchmark",
            "embedding_extraction.extract_vit_features",
            "negative_mining.mine_initial_negatives",
            "training.train_dqe_cir",
            "evaluation.evaluate_checkpoint",
        ):
            assert rep["nodes"][node]["seconds"] > 0, (name, node)
            assert rep["nodes"][node]["peak_rss_gib"] > 0.1
        images = sum(v["images"] for k, v in rep["data"].items() if isinstance(v, dict))
        assert rep["extraction"]["images"] == images and rep["extraction"]["images_per_s"] > 0
        assert rep["training"]["epochs"] == 2 and all(
            math.isfinite(x) for x in rep["training"]["loss"]
        )
        assert (
            rep["training"]["mining_seconds"][1] > 0
        )  # the negatives were refreshed after epoch 1
        val_queries = sum(
            v["queries"]
            for k, v in rep["data"].items()
            if k.endswith("val") and isinstance(v, dict)
        )
        assert rep["evaluation"]["queries"] == val_queries
    fiq = report["benchmarks"]["fashioniq"]["evaluation"]["metrics"]
    assert {"dress/recall@10", "shirt/recall@50", "toptee/recall@10"} <= set(
        fiq
    )  # per-category protocol
    cirr = report["benchmarks"]["cirr"]["evaluation"]["metrics"]
    assert {"recall@1", "recall_subset@1"} <= set(cirr)  # CIRR's global and subset protocol


def test_full_size_preset_builds_a_blip2_vitg_sized_model() -> None:
    import torch
    from transformers import Blip2ForImageTextRetrieval

    from dqe_cir_pipeline.model.backbone import tiny_blip2_config

    with torch.device("meta"):  # shapes only: no 4.4 GB of weights on a CI machine
        model = Blip2ForImageTextRetrieval(tiny_blip2_config(_load("_real_data_smoke").FULL_SIZE))
    params = sum(p.numel() for p in model.parameters())
    assert 1.15e9 < params < 1.20e9, params  # ViT-g/14 (~1.0 B) + Q-Former + projections
    assert tuple(model.vision_model.embeddings.position_embedding.shape) == (1, 257, 1408)
    assert tuple(model.query_tokens.shape) == (1, 32, 768)
    assert model.vision_projection.out_features == 256
