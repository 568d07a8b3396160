"""Model factories: zero-shot copies the backbone, untrained re-initialises it."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import tiny_backbone  # noqa: E402

from dqe_cir_pipeline.model.backbone import Backbone  # noqa: E402
from dqe_cir_pipeline.model.dqe import DQEConfig  # noqa: E402
from dqe_cir_pipeline.model.factory import build_model, build_untrained_model  # noqa: E402


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return tiny_backbone(tmp_path_factory.mktemp("tiny"))


def test_zero_shot_copies_the_backbone_and_untrained_does_not(backbone: Backbone) -> None:
    zero = build_model(backbone, DQEConfig(), seed=0, device="cpu")
    a = build_untrained_model(backbone, DQEConfig(), seed=0, device="cpu")
    b = build_untrained_model(backbone, DQEConfig(), seed=0, device="cpu")
    name = "encoder.layer.0.attention.attention.query.weight"
    original = dict(backbone.model.qformer.named_parameters())[name]
    assert torch.equal(dict(zero.qformer.named_parameters())[name], original)
    assert not torch.equal(dict(a.qformer.named_parameters())[name], original)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka  # seeded: the same floor every run
    assert a.query_tokens.std() > 0.005  # not HF's all-zero start (identical tokens)
    # the backbone itself is untouched
    assert torch.equal(dict(backbone.model.qformer.named_parameters())[name], original)


def test_untrained_differs_per_seed(backbone: Backbone) -> None:
    a = build_untrained_model(backbone, DQEConfig(), seed=0, device="cpu")
    b = build_untrained_model(backbone, DQEConfig(), seed=1, device="cpu")
    assert not torch.equal(a.query_tokens, b.query_tokens)
