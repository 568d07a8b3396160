"""DQE-CIR model on a tiny random BLIP-2: shapes, gradients, frozen ViT, overfitting."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dqe_cir_pipeline.model.backbone import Backbone, TinyBackboneSpec, build_tiny_backbone
from dqe_cir_pipeline.model.data import tokenize
from dqe_cir_pipeline.model.dqe import DQECIR, DQEConfig
from dqe_cir_pipeline.model.losses import DQELoss, EncodedBatch, LossConfig

os.environ["HF_HUB_OFFLINE"] = "1"

CAPTIONS = [
    "make it red",
    "is blue and longer",
    "turn the circle into a square",
    "a darker green triangle",
]
B, T, D, Q, P = 4, 65, 128, 16, 64


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny matmuls on a shared 2-core box: one thread avoids oversubscription stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return build_tiny_backbone(
        TinyBackboneSpec(), CAPTIONS, Path(tmp_path_factory.mktemp("dqe")) / "tiny"
    )


def _model(backbone: Backbone, **kw: object) -> DQECIR:
    torch.manual_seed(0)
    return DQECIR(copy.deepcopy(backbone.model), DQEConfig(**kw))  # type: ignore[arg-type]


def _batch(backbone: Backbone, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    ref, tgt, neg = (torch.randn(B, T, D, generator=g) for _ in range(3))
    ids, mask = tokenize(backbone.tokenizer, CAPTIONS, backbone.max_text_len, torch.device("cpu"))
    return ref, tgt, neg, ids, mask


def test_shapes_norms_and_initial_weights(backbone: Backbone) -> None:
    model = _model(backbone).eval()
    ref, tgt, _, ids, mask = _batch(backbone)
    with torch.no_grad():
        emb = model.encode_targets(tgt)
        out = model.encode_queries(ref, ids, mask)
    assert emb.shape == (B, Q, P)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(B, Q))
    for v in (out.q, out.q_base, out.q_color, out.q_shape):
        assert v.shape == (B, P)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(B))
    assert out.weights.shape == (B, 3)
    torch.testing.assert_close(
        out.weights, torch.tensor([[0.8, 0.1, 0.1]]).expand(B, 3), atol=1e-3, rtol=0
    )
    # [design] residual heads: sub-queries start next to q_base, so q does too.
    assert ((out.q_color * out.q_base).sum(-1) > 0.99).all()
    assert ((out.q * out.q_base).sum(-1) > 0.99).all()
    assert not torch.equal(emb[:, 0], emb[:, 1])  # query tokens differ -> token embeddings differ


def test_scores_match_naive_loop(backbone: Backbone) -> None:
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, P, generator=g)
    targets = torch.randn(5, Q, P, generator=g)
    naive = torch.tensor(
        [[max(float(q[i] @ targets[n, k]) for k in range(Q)) for n in range(5)] for i in range(3)]
    )
    torch.testing.assert_close(DQECIR.score(q, targets), naive)
    torch.testing.assert_close(DQECIR.pair_score(q, targets[:3]), naive.diagonal())


def test_query_depends_on_text_and_reference_not_on_padding(backbone: Backbone) -> None:
    model = _model(backbone).eval()
    ref, _, _, ids, mask = _batch(backbone)
    with torch.no_grad():
        full = model.encode_queries(ref, ids, mask)
        alone = model.encode_queries(
            ref[:1],
            *tokenize(backbone.tokenizer, CAPTIONS[:1], backbone.max_text_len, torch.device("cpu")),
        )  # no padding
        other_ref = model.encode_queries(ref.roll(1, 0), ids, mask)
    torch.testing.assert_close(alone.q[0], full.q[0], atol=1e-5, rtol=0)
    assert (full.q[0] - full.q[1]).abs().max() > 1e-3  # text matters
    assert (full.q - other_ref.q).abs().max() > 1e-3  # reference image matters


def test_gradients_reach_every_parameter_and_not_the_vit(backbone: Backbone) -> None:
    base = copy.deepcopy(backbone.model)
    model = DQECIR(base, DQEConfig()).train()
    vit_ids = {id(p) for p in base.vision_model.parameters()}
    assert not vit_ids & {id(p) for p in model.parameters()}
    assert len(model.trainable_parameters()) == len(list(model.parameters()))
    ref, tgt, neg, ids, mask = _batch(backbone)
    out = model.encode_queries(ref, ids, mask)
    edits = torch.ones(B, dtype=torch.bool)
    batch = EncodedBatch(
        out, model.encode_targets(tgt), edits, edits, negatives=model.encode_targets(neg)
    )
    DQELoss()(model, batch).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert all(p.grad is None for p in base.vision_model.parameters())


def test_optimiser_step_leaves_vit_unchanged(backbone: Backbone) -> None:
    base = copy.deepcopy(backbone.model)
    vit_before = {k: v.clone() for k, v in base.vision_model.state_dict().items()}
    qformer_before = {k: v.clone() for k, v in base.qformer.state_dict().items()}
    model = DQECIR(base, DQEConfig()).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    ref, tgt, neg, ids, mask = _batch(backbone)
    out = model.encode_queries(ref, ids, mask)
    edits = torch.tensor([True, False, True, False])
    batch = EncodedBatch(
        out, model.encode_targets(tgt), edits, ~edits, negatives=model.encode_targets(neg)
    )
    DQELoss()(model, batch).loss.backward()
    opt.step()
    assert all(torch.equal(v, base.vision_model.state_dict()[k]) for k, v in vit_before.items())
    # the model trains its own copy of the Q-Former; the backbone stays pristine
    assert any(not torch.equal(v, model.qformer.state_dict()[k]) for k, v in qformer_before.items())
    assert all(torch.equal(v, base.qformer.state_dict()[k]) for k, v in qformer_before.items())


def test_without_attribute_weights(backbone: Backbone) -> None:
    model = _model(backbone, use_attribute_weights=False).eval()
    assert not hasattr(model, "weight_mlp")
    ref, _, _, ids, mask = _batch(backbone)
    with torch.no_grad():
        out = model.encode_queries(ref, ids, mask)
    assert torch.equal(out.q, out.q_base)
    assert torch.equal(out.weights, torch.tensor([[1.0, 0.0, 0.0]]).expand(B, 3))
    assert out.q_color.shape == (B, P)


def test_cls_pooling_differs_from_mean(backbone: Backbone) -> None:
    ref, _, _, ids, mask = _batch(backbone)
    with torch.no_grad():
        mean = _model(backbone).eval().encode_queries(ref, ids, mask).q_base
        cls = _model(backbone, query_pooling="cls").eval().encode_queries(ref, ids, mask).q_base
    assert (mean - cls).abs().max() > 1e-3


def test_temperature_is_clamped(backbone: Backbone) -> None:
    model = _model(backbone)
    assert model.temperature().item() == pytest.approx(0.07)
    with torch.no_grad():
        model.log_temperature.fill_(math.log(1e-4))
    assert model.temperature().item() == pytest.approx(0.01)
    with torch.no_grad():
        model.log_temperature.fill_(math.log(3.0))
    assert model.temperature().item() == pytest.approx(0.5)


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        DQEConfig(query_pooling="max")
    with pytest.raises(ValueError):
        DQEConfig(base_weight_init=1.0)
    with pytest.raises(ValueError):
        DQEConfig(temperature_init=0.001)


def test_overfits_a_handful_of_pairs(backbone: Backbone) -> None:
    model = _model(backbone).train()
    loss_fn = DQELoss(LossConfig(objective="pairwise_kl", weight_order=0.0))  # the ranking terms
    ref, tgt, neg, ids, mask = _batch(backbone)
    ec, es = torch.tensor([True, False, True, False]), torch.tensor([False, True, True, False])
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(40):
        out = model.encode_queries(ref, ids, mask)
        batch = EncodedBatch(
            out, model.encode_targets(tgt), ec, es, negatives=model.encode_targets(neg)
        )
        terms = loss_fn(model, batch)
        opt.zero_grad()
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), 1.0)
        opt.step()
        losses.append(terms.loss.item())
    assert losses[-1] < 0.05 * losses[0]
    model.eval()
    with torch.no_grad():
        q = model.encode_queries(ref, ids, mask).q
        s_pos = model.pair_score(q, model.encode_targets(tgt))
        s_neg = model.pair_score(q, model.encode_targets(neg))
    assert (s_pos > s_neg).all()
