"""Stage-1 pretraining: the losses fall, descriptions retrieve their images above chance,
only the Q-Former side moves, and the result saves and reloads bit for bit."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import SPEC, tiny_backbone  # noqa: E402

from dqe_cir_pipeline.model.backbone import Backbone, BackboneConfig, load_backbone  # noqa: E402
from dqe_cir_pipeline.model.extract import MemoryFeatures  # noqa: E402
from dqe_cir_pipeline.model.pretrain import (  # noqa: E402
    DescribedImages,
    PretrainConfig,
    Stage1,
    pretrain,
    text_to_image_recall,
)

COLORS = ["red", "blue", "green"]
SHAPES = ["circle", "square", "star"]


def _corpus(n: int, seed: int = 0) -> tuple[DescribedImages, MemoryFeatures]:
    """Images whose ViT tokens carry their (colour, shape) as a fixed random pattern, and
    descriptions that name them: a learnable image-text correspondence."""
    rng = np.random.default_rng(seed)
    pattern = {
        (c, s): rng.standard_normal((17, SPEC.vision_hidden)) for c in COLORS for s in SHAPES
    }
    ids, descriptions, tokens = [], [], []
    for i in range(n):
        c, s = COLORS[i % 3], SHAPES[(i // 3) % 3]
        ids.append(f"img{i}")
        descriptions.append([f"a {c} {s}", f"the {s} is {c}"])
        noise = 0.3 * rng.standard_normal((17, SPEC.vision_hidden))
        tokens.append(pattern[(c, s)] + noise)
    return DescribedImages(ids, descriptions), MemoryFeatures(ids, np.asarray(tokens, np.float16))


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    torch.set_num_threads(1)
    return tiny_backbone(tmp_path_factory.mktemp("tiny"))


def test_pretraining_lowers_the_losses_and_retrieves_above_chance(backbone: Backbone) -> None:
    data, feats = _corpus(90)
    # a from-scratch Q-Former sits on a plateau (every text embeds alike) before the
    # contrastive signal breaks the symmetry; 3e-3 gets past it within the budget
    cfg = PretrainConfig(
        steps=150, batch_size=18, lr=3e-3, warmup_steps=20, held_out=18, log_every=50
    )
    vision_before = {k: v.clone() for k, v in backbone.model.vision_model.state_dict().items()}
    qformer_before = {k: v.clone() for k, v in backbone.model.qformer.state_dict().items()}
    history = pretrain(backbone.model, backbone.tokenizer, feats, data, cfg, max_len=16)
    assert [h["step"] for h in history] == [50.0, 100.0, 150.0]
    assert history[-1]["itc"] < history[0]["itc"]
    assert history[-1]["fused_itc"] < history[0]["fused_itc"]
    # 9 (colour, shape) kinds among the 18 held-out images: chance R@5 = 5/18 = 28 %
    assert history[-1]["text_to_image/recall@5"] > 40.0
    for k, v in backbone.model.vision_model.state_dict().items():
        assert torch.equal(v, vision_before[k]), k  # the ViT is frozen
    moved = [
        k
        for k, v in backbone.model.qformer.state_dict().items()
        if not torch.equal(v, qformer_before[k])
    ]
    assert moved, "the Q-Former did not train"


def test_recall_counts_ranks_exactly(backbone: Backbone) -> None:
    data, feats = _corpus(12, seed=3)
    net = Stage1(backbone.model)
    out = text_to_image_recall(net, backbone.tokenizer, feats, data, max_len=16, ks=(1, 12))
    assert out["text_to_image/recall@12"] == 100.0  # every image is within the whole set
    assert 0.0 <= out["text_to_image/recall@1"] <= 100.0


def test_held_out_images_are_never_trained_on() -> None:
    data, _ = _corpus(10)
    train, held = data.split(3)
    assert train.image_ids == data.image_ids[:7] and held.image_ids == data.image_ids[7:]
    with pytest.raises(ValueError, match="no training images"):
        data.split(10)
    with pytest.raises(ValueError, match="without a description"):
        DescribedImages(["a"], [[]])


def test_saved_backbone_reloads_bit_exact(backbone: Backbone, tmp_path: Path) -> None:
    backbone.model.save_pretrained(str(tmp_path))
    backbone.tokenizer.save_pretrained(str(tmp_path))
    again = load_backbone(BackboneConfig(source="pretrained", name_or_path=str(tmp_path)))
    mine, theirs = backbone.model.state_dict(), again.model.state_dict()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert torch.equal(mine[k], theirs[k]), k
    assert (
        again.tokenizer("a red star")["input_ids"] == backbone.tokenizer("a red star")["input_ids"]
    )
