"""An epoch's plan and the typed training batches drawn from it.

A ``TrainBatch`` is gathered on the host (cached ViT tokens, tokenised captions, labels),
one step ahead on a worker thread, and moved to the device with :meth:`TrainBatch.to`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from dqe_cir_pipeline.model.data import FeatureSource, TrainData, host_tokens, to_device, tokenize

_HOST = torch.device("cpu")


@dataclass
class EpochPlan:
    """What rank 0 decides before an epoch and every rank uses (N training queries).

    Attributes:
        negatives: (N,) pool index of each query's negative, or None (no negatives).
        order: (N,) the order the queries are visited in.
        texts: the caption of each query this epoch.
        mining_seconds: time spent (re-)mining negatives for this epoch.
        contrasts: (N, 2) attribute-contrast pool images (colour, shape; -1: none), or None.
        stats: statistics of what was drawn, logged as ``train/<key>``.
    """

    negatives: np.ndarray | None
    order: np.ndarray
    texts: list[str]
    mining_seconds: float = 0.0
    contrasts: np.ndarray | None = None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainBatch:
    """One rank's rows of one training step (b rows; T tokens of width D; L text length).

    Image tokens are float16 on the host (pinned for a CUDA copy) and float32 after
    :meth:`to`.

    Attributes:
        rows: (b,) query indices into ``TrainData`` (stays a host array).
        reference: (b, T, D) cached ViT tokens of the reference images.
        target: (b, T, D) cached ViT tokens of the targets.
        input_ids: (b, L) the tokenised captions.
        attention_mask: (b, L).
        edits_color: (b,) bool, the edit touches colour.
        edits_shape: (b,) bool, the edit touches shape.
        target_index: (b,) int64 pool index of each target.
        negative: (b, T, D) tokens of each row's negative, or None.
        negative_index: (b,) int64 pool index of each negative, or None.
        contrast: (k, T, D) tokens of the attribute-contrast images, one per set slot of
            ``contrast_mask`` in row-major order; None when no row has one.
        contrast_mask: (b, 2) bool, which (row, colour/shape) slots have a contrast image;
            None exactly when ``contrast`` is.
    """

    rows: np.ndarray
    reference: torch.Tensor
    target: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    edits_color: torch.Tensor
    edits_shape: torch.Tensor
    target_index: torch.Tensor
    negative: torch.Tensor | None = None
    negative_index: torch.Tensor | None = None
    contrast: torch.Tensor | None = None
    contrast_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def to(self, device: torch.device) -> TrainBatch:
        """This batch on ``device``: image tokens as float32, the rest as they are."""

        def tokens(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else to_device(t, device)

        def plain(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            reference=to_device(self.reference, device),
            target=to_device(self.target, device),
            negative=tokens(self.negative),
            contrast=tokens(self.contrast),
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            edits_color=self.edits_color.to(device),
            edits_shape=self.edits_shape.to(device),
            target_index=self.target_index.to(device),
            negative_index=plain(self.negative_index),
            contrast_mask=plain(self.contrast_mask),
        )


@dataclass(frozen=True)
class BatchSource:
    """Where training batches come from: the queries, their cached tokens, the tokenizer.

    Attributes:
        data: the training queries and their pool.
        features: cached ViT tokens by image id.
        tokenizer: the backbone's tokenizer.
        max_text_len: tokenizer truncation.
        pin: page-lock the host tokens (an asynchronous copy to a GPU).
    """

    data: TrainData
    features: FeatureSource
    tokenizer: Any
    max_text_len: int
    pin: bool = False

    def gather(self, plan: EpochPlan, rows: np.ndarray) -> TrainBatch:
        """The host batch of queries ``rows`` under ``plan``."""
        d = self.data

        def tokens(pool_rows: np.ndarray) -> torch.Tensor:
            return host_tokens(self.features, [d.pool_ids[j] for j in pool_rows], self.pin)

        reference = host_tokens(self.features, [d.reference_ids[i] for i in rows], self.pin)
        target = host_tokens(self.features, [d.target_ids[i] for i in rows], self.pin)
        negative = negative_index = contrast = contrast_mask = None
        if plan.negatives is not None:
            negative = tokens(plan.negatives[rows])
            negative_index = torch.as_tensor(plan.negatives[rows])
        if plan.contrasts is not None:
            slots = plan.contrasts[rows] >= 0  # (b, 2)
            if slots.any():
                contrast = tokens(plan.contrasts[rows][slots])  # row-major, as the mask
                contrast_mask = torch.as_tensor(slots)
        ids, mask = tokenize(
            self.tokenizer, [plan.texts[i] for i in rows], self.max_text_len, _HOST
        )
        return TrainBatch(
            rows=rows,
            reference=reference,
            target=target,
            input_ids=ids,
            attention_mask=mask,
            edits_color=torch.as_tensor(d.edits_color[rows]),
            edits_shape=torch.as_tensor(d.edits_shape[rows]),
            target_index=torch.as_tensor(d.target_idx[rows]),
            negative=negative,
            negative_index=negative_index,
            contrast=contrast,
            contrast_mask=contrast_mask,
        )
