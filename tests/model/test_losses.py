"""Losses on hand-made tensors with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model.dqe import DQECIR, QueryOutput
from dqe_cir_pipeline.model.losses import (
    LOSS_TERMS,
    DQELoss,
    EncodedBatch,
    LossConfig,
    attribute_margin_loss,
    in_batch_contrastive_loss,
    pairwise_kl_loss,
)


def test_pairwise_kl_hand_computed() -> None:
    s_pos, s_neg = torch.tensor([0.5, 0.2]), torch.tensor([0.3, 0.4])
    # (s_pos - s_neg) / tau = [2, -2]; -log sigmoid(2) = 0.126928, -log sigmoid(-2) = 2.126928
    assert pairwise_kl_loss(s_pos, s_neg, 0.1).item() == pytest.approx(1.126928, abs=1e-6)
    # ... and it is the KL divergence from the one-hot [1, 0] to softmax([s_pos, s_neg] / tau)
    logp = torch.log_softmax(torch.stack([s_pos, s_neg], 1) / 0.1, dim=1)
    kl = F.kl_div(logp, torch.tensor([[1.0, 0.0], [1.0, 0.0]]), reduction="batchmean")
    assert pairwise_kl_loss(s_pos, s_neg, torch.tensor(0.1)).item() == pytest.approx(
        kl.item(), abs=1e-6
    )


def test_attribute_margin_hand_computed() -> None:
    s_pos = torch.tensor([0.5, 0.2, 0.3], requires_grad=True)
    s_neg = torch.tensor([0.45, 0.4, 0.1])
    mask = torch.tensor([True, True, False])
    # hinges: 0.1 - 0.05 = 0.05, 0.1 + 0.2 = 0.3, (row 3 masked out) -> mean 0.175
    loss = attribute_margin_loss(s_pos, s_neg, mask, 0.1)
    assert loss.item() == pytest.approx(0.175, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(s_pos.grad, torch.tensor([-0.5, -0.5, 0.0]))


def test_attribute_margin_empty_mask_is_zero_and_differentiable() -> None:
    s_pos = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = attribute_margin_loss(s_pos, torch.tensor([1.0, 1.0]), torch.tensor([False, False]), 0.1)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(s_pos.grad, torch.zeros(2))


def test_in_batch_contrastive_hand_computed() -> None:
    scores = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2  # 0.503204
    assert in_batch_contrastive_loss(scores, 1.0).item() == pytest.approx(expected, abs=1e-6)
    assert in_batch_contrastive_loss(scores * 10, 10.0).item() == pytest.approx(expected, abs=1e-6)


class _Stub:
    """Just what DQELoss needs from a model: a fixed temperature and the scores."""

    score = staticmethod(DQECIR.score)
    pair_score = staticmethod(DQECIR.pair_score)

    def temperature(self) -> torch.Tensor:
        return torch.tensor(0.1)


def _case() -> tuple[QueryOutput, torch.Tensor, torch.Tensor]:
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    out = QueryOutput(
        q=e0[None],
        q_base=e0[None],
        q_color=e1[None],
        q_shape=e0[None],
        weights=torch.tensor([[1.0, 0, 0]]),
    )
    target = torch.stack([e0, e1])[None]  # (1, 2, 2): s(e0) = 1, s(e1) = 1
    negative = torch.tensor([[[0.6, 0.8], [0.0, 1.0]]])  # s(e0) = 0.6, s(e1) = 1
    return out, target, negative


def test_dqe_loss_pairwise_hand_computed() -> None:
    out, target, negative = _case()
    color_edit = EncodedBatch(out, target, torch.tensor([True]), torch.tensor([False]), negative)
    terms = DQELoss(LossConfig(weight_order=0.0))(_Stub(), color_edit)  # type: ignore[arg-type]
    assert LOSS_TERMS == ("loss", "main", "color_margin", "shape_margin", "weight_order")
    assert list(terms.as_dict()) == list(LOSS_TERMS)
    assert terms.weight_order.item() == 0.0  # switched off
    main = math.log(1 + math.exp(-4.0))  # softplus((0.6 - 1) / 0.1)
    assert terms.main.item() == pytest.approx(main, abs=1e-6)
    assert terms.color_margin.item() == pytest.approx(0.1, abs=1e-6)  # e1 ties: hinge = m
    assert terms.shape_margin.item() == 0.0  # not a shape edit
    assert terms.loss.item() == pytest.approx(main + 0.5 * 0.1, abs=1e-6)
    both = EncodedBatch(out, target, torch.tensor([True]), torch.tensor([True]), negative)
    no_margin = DQELoss(LossConfig(use_margins=False, weight_order=0.0))(_Stub(), both)  # type: ignore[arg-type]
    assert no_margin.loss.item() == pytest.approx(main, abs=1e-6)
    with pytest.raises(ValueError):
        no_negative = EncodedBatch(out, target, torch.tensor([True]), torch.tensor([True]))
        DQELoss(LossConfig(weight_order=0.0))(_Stub(), no_negative)  # type: ignore[arg-type]


def test_dqe_loss_contrastive_uses_rolled_negatives() -> None:
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    q = torch.stack([e0, e1])
    out = QueryOutput(q=q, q_base=q, q_color=q, q_shape=q, weights=torch.tensor([[1.0, 0, 0]] * 2))
    target = torch.stack([torch.stack([e0, e0]), torch.stack([e1, e1])])  # (2, 2, 2)
    batch = EncodedBatch(out, target, torch.tensor([True, True]), torch.tensor([False, True]))
    terms = DQELoss(LossConfig(objective="contrastive", weight_order=0.0))(_Stub(), batch)  # type: ignore[arg-type]
    # scores = identity; CE over [10, 0] / row: log(1 + e^-10)
    assert terms.main.item() == pytest.approx(math.log(1 + math.exp(-10.0)), abs=1e-7)
    # rolled negative = the other row's target: pos 1, neg 0 -> margin satisfied
    assert terms.color_margin.item() == 0.0 and terms.shape_margin.item() == 0.0
    with pytest.raises(ValueError):
        LossConfig(objective="triplet")


def test_batch_kl_is_cross_entropy_over_targets_and_negatives_with_duplicates_masked() -> None:
    from dqe_cir_pipeline.model.losses import batch_kl_loss

    scores = torch.tensor(
        [[0.9, 0.2, 0.5, 0.8], [0.1, 0.7, 0.3, 0.6]]
    )  # 2 rows: 2 targets + 2 negatives
    tau = 0.5
    plain = batch_kl_loss(scores, tau)
    z = scores / tau
    expected = -(torch.log_softmax(z[0], 0)[0] + torch.log_softmax(z[1], 0)[1]) / 2
    assert torch.isclose(plain, expected)
    # row 0's target (image 7) is also row 1's negative (column 3): masked for row 0 only
    target_index = torch.tensor([7, 8])
    cand_index = torch.tensor([7, 8, 5, 7])
    masked = batch_kl_loss(scores, tau, target_index, cand_index)
    row0 = -torch.log_softmax(z[0, :3], 0)[0]
    row1 = -torch.log_softmax(z[1], 0)[1]
    assert torch.isclose(masked, (row0 + row1) / 2)


def test_weight_order_asks_colour_edits_for_colour_and_shape_edits_for_shape() -> None:
    from dqe_cir_pipeline.model.losses import weight_order_loss

    logits = torch.zeros(4, 3, requires_grad=True)
    weights = logits.softmax(dim=-1)  # all equal: every ordered row violates the margin
    color = torch.tensor([True, False, True, False])
    shape = torch.tensor([False, True, True, False])  # row 2 touches both, row 3 neither
    loss = weight_order_loss(weights, color, shape, margin=0.1, denominator=4.0)
    assert loss.item() == pytest.approx(2 * 0.1 / 4)  # only the two single-attribute rows
    loss.backward()
    grad = logits.grad
    assert grad[0, 1] < 0 < grad[0, 2]  # descent raises w_color, lowers w_shape (colour edit)
    assert grad[1, 2] < 0 < grad[1, 1]  # and the reverse on the shape edit
    assert torch.all(grad[2:] == 0)  # no opinion on both / neither
    ordered = torch.tensor([[0.5, 0.4, 0.1], [0.5, 0.1, 0.4]])
    assert weight_order_loss(ordered, color[:2], shape[:2], 0.1, 2.0).item() == 0.0
