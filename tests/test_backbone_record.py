"""A run records which backbone it used: the extraction stage's ``backbone_info`` carries a
converted LAVIS folder's arch and CLIP depth, and the provenance hook logs them as MLflow
params (``backbone.arch``, ``backbone.vision_depth``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from transformers import BertTokenizer

from dqe_cir_pipeline.hooks.provenance import ProvenanceHooks
from dqe_cir_pipeline.model.backbone import BackboneConfig
from dqe_cir_pipeline.pipelines.embedding_extraction.nodes import prepare_backbone
from tests.model.test_lavis import WORDS, _convert, clip_file, qformer_file


@pytest.fixture(scope="module")
def vit_l_info(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``backbone_info`` of a converted tiny ``pretrain_vitL`` folder (2 CLIP blocks)."""
    tmp = tmp_path_factory.mktemp("vitl")
    tokenizer = tmp / "bert"
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)}).save_pretrained(str(tokenizer))
    out, _ = _convert(tmp, "pretrain_vitL", clip_file(), qformer_file(), tokenizer, depth=2)
    config = BackboneConfig(source="pretrained", name_or_path=str(out))
    return prepare_backbone(pd.DataFrame(), config)


def test_backbone_info_records_the_lavis_arch_and_depth(vit_l_info: dict[str, Any]) -> None:
    assert vit_l_info["arch"] == "pretrain_vitL"
    assert vit_l_info["vision_tower"] == "clip_vit"
    assert vit_l_info["vision_depth"] == vit_l_info["vision_layers"] == 2
    assert vit_l_info["lavis_default_depth"] == 23  # what LAVIS builds; converted at 2
    assert set(vit_l_info["lavis_sha256"]) == {"qformer", "vision"}
    assert (vit_l_info["vision_tokens"], vit_l_info["vision_width"]) == (17, 32)


def test_the_tiny_preset_is_recorded_as_such(tmp_path: Path) -> None:
    triplets = pd.DataFrame(
        {"split": ["train"], "captions_train": [["make it red"]], "caption_eval": ["make it red"]}
    )
    config = BackboneConfig(source="tiny", tiny_dir=str(tmp_path / "tiny"))
    info = prepare_backbone(triplets, config)
    assert (info["arch"], info["vision_tower"], info["vision_depth"]) == ("tiny", "blip2_vision", 4)


def test_the_run_logs_the_backbone_arch_and_depth(
    vit_l_info: dict[str, Any], tmp_path: Path
) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    hooks = ProvenanceHooks()
    try:
        with mlflow.start_run() as run:
            hooks.after_node_run(outputs={"backbone_info": vit_l_info}, inputs={})
            hooks.before_node_run(inputs={"backbone_info": vit_l_info})  # a later node
        params = mlflow.get_run(run.info.run_id).data.params
    finally:
        mlflow.set_tracking_uri(previous)
    assert params["backbone.arch"] == "pretrain_vitL"
    assert params["backbone.vision_depth"] == "2"
    assert params["backbone.vision_tower"] == "clip_vit"
