"""Training objectives: pairwise KL (QuRe / DQE-CIR), attribute margins, in-batch contrastive.

Shapes: B batch, Q target tokens, P projection width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .dqe import DQECIR, QueryOutput

OBJECTIVES = ("pairwise_kl", "batch_kl", "contrastive")


@dataclass
class LossConfig:
    """Objective configuration.

    Attributes:
        objective: "pairwise_kl" (target vs its one mined negative, QuRe's form),
            "batch_kl" (KL to one-hot over the batch's targets plus every row's mined
            negative; [design] the default, see docs/method.md) or "contrastive"
            (in-batch cross-entropy over targets only: SPRC / CLIP4Cir).
        use_margins: add the attribute margin losses.
        margin: hinge margin m.
        lambda_color: weight of the color margin loss.
        lambda_shape: weight of the shape margin loss.
    """

    objective: str = "pairwise_kl"
    use_margins: bool = True
    margin: float = 0.1
    lambda_color: float = 0.5
    lambda_shape: float = 0.5

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES}, got {self.objective!r}"
            )


def pairwise_kl_loss(
    s_pos: torch.Tensor, s_neg: torch.Tensor, tau: torch.Tensor | float
) -> torch.Tensor:
    """KL(one-hot [1, 0] || softmax([s_pos, s_neg] / tau)), averaged over the batch.

    The entropy of a one-hot target is zero, so the KL is the cross-entropy
    -log softmax_0 = -log sigmoid((s_pos - s_neg) / tau) = softplus((s_neg - s_pos) / tau).

    Args:
        s_pos: (B,) query-target scores.
        s_neg: (B,) query-negative scores.
        tau: temperature (scalar).

    Returns:
        Scalar loss.
    """
    return F.softplus((s_neg - s_pos) / tau).mean()


def attribute_margin_loss(
    s_pos_attr: torch.Tensor, s_neg_attr: torch.Tensor, mask: torch.Tensor, margin: float
) -> torch.Tensor:
    """Hinge max(0, m - (s_pos - s_neg)) averaged over the rows selected by ``mask``.

    Args:
        s_pos_attr: (B,) attribute sub-query vs target scores.
        s_neg_attr: (B,) attribute sub-query vs negative scores.
        mask: (B,) bool, rows whose edit touches the attribute.
        margin: m.

    Returns:
        Scalar; exactly 0 (still attached to the graph) when no row is selected.
    """
    hinge = F.relu(margin - (s_pos_attr - s_neg_attr))
    m = mask.to(hinge.dtype)
    return (hinge * m).sum() / m.sum().clamp_min(1.0)


def in_batch_contrastive_loss(scores: torch.Tensor, tau: torch.Tensor | float) -> torch.Tensor:
    """Cross-entropy over the batch with the diagonal as targets (SPRC / CLIP4Cir).

    Args:
        scores: (B, B) query i vs target j scores.
        tau: temperature (scalar).

    Returns:
        Scalar loss.
    """
    labels = torch.arange(scores.shape[0], device=scores.device)
    return F.cross_entropy(scores / tau, labels)


def batch_kl_loss(
    scores: torch.Tensor,
    tau: torch.Tensor | float,
    target_index: torch.Tensor | None = None,
    candidate_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(one-hot || softmax(scores / tau)) over the batch's candidates (= cross-entropy).

    Candidate ``i`` is row ``i``'s target; the other columns are the other rows' targets
    and, for ``batch_kl``, every row's mined negative. [design] Columns showing the same
    image as the row's own target (a sibling's target, or a negative mined for another
    row that *is* this row's target) are masked out rather than pushed away.

    Args:
        scores: (B, C) query i vs candidate c, C >= B, the first B candidates are targets.
        tau: temperature.
        target_index: (B,) image index of each row's target (None: no masking).
        candidate_index: (C,) image index of each candidate.

    Returns:
        Scalar loss.
    """
    b = scores.shape[0]
    rows = torch.arange(b, device=scores.device)
    logits = scores / tau
    if target_index is not None and candidate_index is not None:
        same = candidate_index.unsqueeze(0) == target_index.unsqueeze(1)  # (B, C)
        same[rows, rows] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, rows)


class DQELoss(nn.Module):
    """L = main + lambda_c L_color + lambda_s L_shape, returned as named terms.

    Args:
        cfg: loss configuration.
    """

    def __init__(self, cfg: LossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()

    def forward(
        self,
        model: DQECIR,
        out: QueryOutput,
        target_emb: torch.Tensor,
        negative_emb: torch.Tensor | None,
        edits_color: torch.Tensor,
        edits_shape: torch.Tensor,
        target_index: torch.Tensor | None = None,
        negative_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute the loss terms.

        Args:
            model: the DQE-CIR model (scores and temperature).
            out: composed queries of the batch.
            target_emb: (B, Q, P) target embeddings.
            negative_emb: (B, Q, P) one mined negative per row, or None. Required for
                "pairwise_kl"; for "contrastive" only used by the margins, which
                otherwise take the target of the previous row (a rolled batch).
            edits_color: (B,) bool, edit touches color.
            edits_shape: (B,) bool, edit touches shape.
            target_index: (B,) image index of each target (masks duplicates in batch
                objectives).
            negative_index: (B,) image index of each negative.

        Returns:
            dict with scalar tensors "loss", "main", "color_margin", "shape_margin".
        """
        cfg, tau = self.cfg, model.temperature()
        if cfg.objective == "pairwise_kl":
            if negative_emb is None:
                raise ValueError("objective 'pairwise_kl' needs one negative per query")
            main = pairwise_kl_loss(
                model.pair_score(out.q, target_emb), model.pair_score(out.q, negative_emb), tau
            )
        elif cfg.objective == "batch_kl":
            if negative_emb is None:
                raise ValueError("objective 'batch_kl' needs one negative per query")
            cand = torch.cat([target_emb, negative_emb])
            idx = None if target_index is None or negative_index is None else torch.cat([target_index, negative_index])
            main = batch_kl_loss(model.score(out.q, cand), tau, target_index, idx)
        else:
            main = batch_kl_loss(model.score(out.q, target_emb), tau, target_index, target_index)

        if cfg.use_margins:
            neg = negative_emb if negative_emb is not None else target_emb.roll(1, dims=0)
            color = attribute_margin_loss(
                model.pair_score(out.q_color, target_emb),
                model.pair_score(out.q_color, neg),
                edits_color,
                cfg.margin,
            )
            shape = attribute_margin_loss(
                model.pair_score(out.q_shape, target_emb),
                model.pair_score(out.q_shape, neg),
                edits_shape,
                cfg.margin,
            )
        else:
            color = shape = main.new_zeros(())
        loss = main + cfg.lambda_color * color + cfg.lambda_shape * shape
        return {"loss": loss, "main": main, "color_margin": color, "shape_margin": shape}
