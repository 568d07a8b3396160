"""``benchmarks/bench_full_shapes.py``: full-size tensors (ViT-L/14 tokens, the real
Q-Former) through extraction, one DQE-CIR training step and evaluation on a CPU."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_vitl_shapes_flow_through_every_step(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_full_shapes", ROOT / "benchmarks" / "bench_full_shapes.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its siblings
        out = tmp_path / "shapes.json"
        code = module.main(
            ["--presets", "vitl", "--images", "3", "--depth", "1", "--out", str(out)]
        )
    finally:
        if str(ROOT / "benchmarks") in sys.path:
            sys.path.remove(str(ROOT / "benchmarks"))
    assert code == 0
    rep = json.loads(out.read_text())["vitl"]
    shapes = rep["shapes"]
    assert shapes["vit_tokens"] == [3, 257, 1024]
    assert shapes["vision_tower"] == "LavisClipVision"
    assert shapes["query_tokens"] == [1, 32, 768]
    assert (shapes["qformer_hidden"], shapes["qformer_heads"]) == (768, 12)
    assert shapes["cross_attention_width"] == 1024
    assert rep["spec"] == {"vision_layers": 1, "qformer_layers": 12}
    assert set(rep["steps"]) == {"build", "extraction", "mining", "train_step", "evaluation"}
    assert all(v["seconds"] > 0 and v["peak_rss_gib"] > 0 for v in rep["steps"].values())
    assert math.isfinite(rep["loss"]) and rep["recall@1"] is not None
