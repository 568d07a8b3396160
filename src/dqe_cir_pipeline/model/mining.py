"""Negative mining with a live model: embed the pool and the training queries, then mine.

The same call produces the initial negatives (the negative_mining pipeline, untrained
model) and refreshes them during training on the interval schedule.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dqe_cir_pipeline.model.data import FeatureSource, TrainData
from dqe_cir_pipeline.model.dqe import DQECIR
from dqe_cir_pipeline.model.encode import encode_images, encode_queries
from dqe_cir_pipeline.model.mining_result import MiningResult
from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives, sample_negatives


def encode_for_mining(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: Any,
    data: TrainData,
    *,
    batch_size: int = 256,
    max_len: int = 32,
    amp_dtype: str | None = "bfloat16",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training queries (N, P) and the pool (M, Q, P) as ``model`` embeds them now.

    Queries use their evaluation caption (deterministic) so a refresh does not depend on
    which random caption form an epoch drew.
    """
    device = next(model.parameters()).device
    pool = encode_images(
        model, features, data.pool_ids, batch_size=batch_size, device=device, amp_dtype=amp_dtype
    )
    queries = encode_queries(
        model,
        features,
        tokenizer,
        data.reference_ids,
        data.caption_eval,
        batch_size=batch_size,
        max_len=max_len,
        device=device,
        amp_dtype=amp_dtype,
    )
    return queries.q, pool


def mine_from_embeddings(
    queries: torch.Tensor,
    pool: torch.Tensor,
    data: TrainData,
    mining: MiningConfig,
    device: torch.device,
) -> MiningResult:
    """``mine_negatives`` for ``data``'s targets, references and groups."""
    return mine_negatives(
        queries.to(device),
        pool.to(device),
        torch.as_tensor(data.target_idx),
        torch.as_tensor(data.reference_idx),
        mining,
        query_groups=None if data.query_groups is None else torch.as_tensor(data.query_groups),
        pool_groups=None if data.pool_groups is None else torch.as_tensor(data.pool_groups),
    )


def mine_with_model(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: Any,
    data: TrainData,
    mining: MiningConfig,
    *,
    max_len: int = 32,
    amp_dtype: str | None = "bfloat16",
) -> MiningResult:
    """Encode the pool and the training queries with ``model`` and mine negatives."""
    queries, pool = encode_for_mining(
        model, features, tokenizer, data, max_len=max_len, amp_dtype=amp_dtype
    )
    return mine_from_embeddings(queries, pool, data, mining, next(model.parameters()).device)


def random_negatives(data: TrainData, rng: np.random.Generator) -> np.ndarray:
    """One uniform negative per query from its (group's) pool, never target or reference."""
    n_pool = len(data.pool_ids)
    if data.pool_groups is None or data.query_groups is None:
        members = {0: np.arange(n_pool)}
        groups = np.zeros(len(data), dtype=np.int64)
    else:
        members = {
            int(g): np.flatnonzero(data.pool_groups == g) for g in np.unique(data.pool_groups)
        }
        groups = data.query_groups
    out = np.empty(len(data), dtype=np.int64)
    for i in range(len(data)):
        candidates = members[int(groups[i])]
        if len(candidates) < 3:
            raise ValueError(f"query {i}: its negative pool has {len(candidates)} images (< 3)")
        while True:
            pick = int(candidates[rng.integers(len(candidates))])
            if pick != data.target_idx[i] and pick != data.reference_idx[i]:
                out[i] = pick
                break
    return out


def zone_negatives(result: MiningResult, data: TrainData, rng: np.random.Generator) -> np.ndarray:
    """One negative per query drawn uniformly from its stored zone members.

    Raises:
        ValueError: a query has no candidate at all (its pool holds nothing but its
            target and reference); ``-1`` would otherwise index the pool's last image.
    """
    negatives = sample_negatives(result, rng)
    empty = np.flatnonzero(negatives < 0)
    if len(empty):
        names = [data.query_ids[i] for i in empty[:5]]
        raise ValueError(
            f"{len(empty)} training queries have no negative candidate (e.g. {names}): their "
            "pool holds only their target and reference; check the split's images"
        )
    return negatives
