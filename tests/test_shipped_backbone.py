"""The pretrained tiny backbone shipped in models/ is exactly what SHIPPED.json records,
and it is what `kedro run --pipelines=pretraining` would produce with conf/base."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.pipelines.pretraining.nodes import PRETRAINING_FORMAT, PretrainingParams

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "tiny-blip2-synthetic"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((SHIPPED / "SHIPPED.json").read_text())


def test_every_shipped_file_matches_its_recorded_hash(record: dict) -> None:
    files = {p.name for p in SHIPPED.iterdir() if p.is_file() and p.name != "SHIPPED.json"}
    assert files == set(record["sha256"])
    for name, digest in record["sha256"].items():
        assert _sha256(SHIPPED / name) == digest, name
    assert record["bytes"] <= 20 * 2**20  # the repository carries at most 20 MB of weights


def test_shipped_backbone_is_the_default_and_matches_conf_base(record: dict) -> None:
    params = project_config_loader("base")["parameters"]
    backbone = BackboneConfig(**params["backbone"])
    assert backbone.source == "pretrained"
    assert Path(backbone.name_or_path).resolve() == SHIPPED.resolve()
    info = json.loads((SHIPPED / "pretraining.json").read_text())
    assert info["key"] == record["key"]
    described = info["description"]
    assert described["format"] == PRETRAINING_FORMAT
    assert described["architecture"] == asdict(backbone.tiny)  # conf/base reproduces it
    assert described["recipe"] == asdict(PretrainingParams(**params["pretraining"]).train)
    bb = load_backbone(backbone)
    assert bb.model.config.num_query_tokens == backbone.tiny.num_query_tokens
    assert (
        bb.tokenizer("make the red star a blue circle")["input_ids"][0] == bb.tokenizer.cls_token_id
    )
