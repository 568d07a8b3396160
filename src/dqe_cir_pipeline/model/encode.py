"""Embedding a gallery and a query set with a DQE-CIR model, batch by batch, no gradients.

One path for validation, evaluation, mining and the CIRR submission, so every consumer
sees the embeddings training optimised. Progress: a bar on a terminal, log lines at
intervals otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from dqe_cir_pipeline.model.data import FeatureSource, load_tokens, tokenize
from dqe_cir_pipeline.model.device import autocast
from dqe_cir_pipeline.model.dqe import DQECIR
from dqe_cir_pipeline.model.progress import Progress

logger = logging.getLogger(__name__)


@dataclass
class QueryEmbeddings:
    """Composed-query embeddings of a query set: ``q`` (N,P), attribute ``weights`` (N,3)."""

    q: torch.Tensor
    weights: torch.Tensor


@torch.no_grad()
def encode_images(
    model: DQECIR,
    features: FeatureSource,
    image_ids: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp_dtype: str | None = "bfloat16",
) -> torch.Tensor:
    """Target/gallery embeddings for ``image_ids``: (M, Q, P) float32 on CPU."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    with Progress(len(image_ids), desc="encode gallery", unit="image", logger=logger) as bar:
        for start in range(0, len(image_ids), batch_size):
            tokens = load_tokens(features, image_ids[start : start + batch_size], device)
            with autocast(device, amp_dtype):
                emb = model.encode_targets(tokens)
            out.append(emb.float().cpu())
            bar.update(len(emb))
    model.train(was_training)
    if not out:
        raise ValueError("encode_images got no image ids")
    return torch.cat(out)


@torch.no_grad()
def encode_queries(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: Any,
    reference_ids: Sequence[str],
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    max_len: int = 32,
    device: torch.device | None = None,
    amp_dtype: str | None = "bfloat16",
) -> QueryEmbeddings:
    """Composed-query embeddings (N, P) and attribute weights (N, 3), float32 on CPU."""
    if len(reference_ids) != len(texts):
        raise ValueError("reference_ids and texts must have the same length")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    qs: list[torch.Tensor] = []
    ws: list[torch.Tensor] = []
    with Progress(
        len(texts), desc="encode queries", unit="query", item_unit="queries", logger=logger
    ) as bar:
        for start in range(0, len(texts), batch_size):
            tokens = load_tokens(features, reference_ids[start : start + batch_size], device)
            ids, mask = tokenize(tokenizer, texts[start : start + batch_size], max_len, device)
            with autocast(device, amp_dtype):
                out = model.encode_queries(tokens, ids, mask)
            qs.append(out.q.float().cpu())
            ws.append(out.weights.float().cpu())
            bar.update(len(out.q))
    model.train(was_training)
    return QueryEmbeddings(q=torch.cat(qs), weights=torch.cat(ws))
