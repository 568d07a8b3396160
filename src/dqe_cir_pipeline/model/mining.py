"""Negative mining with a live model: embed the pool and the training queries, then mine.

Used for the initial negatives (negative_mining pipeline) and the refreshes in training.
"""

from __future__ import annotations

import math
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

    Queries use their evaluation caption: a refresh must not depend on an epoch's caption draw.
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
    """``mine_negatives`` for ``data``'s targets, references and groups.

    The arrays go in as NumPy: pandas hands out read-only arrays, which ``torch.as_tensor``
    would share with a warning; ``mine_negatives`` only reads them.
    """
    return mine_negatives(
        queries.to(device),
        pool.to(device),
        data.target_idx,
        data.reference_idx,
        mining,
        query_groups=data.query_groups,
        pool_groups=data.pool_groups,
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
) -> tuple[MiningResult, dict[str, float]]:
    """Encode with ``model`` and mine; returns the result and its :func:`neighbourhood_stats`
    and :func:`false_negative_stats`."""
    queries, pool = encode_for_mining(
        model, features, tokenizer, data, max_len=max_len, amp_dtype=amp_dtype
    )
    device = next(model.parameters()).device
    result = mine_from_embeddings(queries, pool, data, mining, device)
    stats = neighbourhood_stats(queries.to(device), pool.to(device), data, result, mining.epsilon)
    stats.update(false_negative_stats(data, result))
    return result, stats


def false_negative_stats(data: TrainData, result: MiningResult) -> dict[str, float]:
    """``false_negative_rate``: the expected share of a pass's drawn negatives that are
    valid targets of their query (a draw is uniform over the query's stored candidates:
    per query the share of them that are valid, averaged over queries with a candidate).

    Empty unless some query lists a valid target besides its annotated one: only then is
    a false negative known (elsewhere it could be any unlabelled match).
    """
    if not data.multi_target:
        return {}
    cand = result.candidates
    has = cand >= 0
    rows = np.broadcast_to(np.arange(len(data))[:, None], cand.shape)
    valid = np.zeros(cand.shape, dtype=bool)
    valid[has] = data.is_valid_target(rows[has], cand[has])
    stored = has.sum(axis=1)
    share = valid.sum(axis=1)[stored > 0] / stored[stored > 0]
    return {"false_negative_rate": float(share.mean()) if share.size else math.nan}


def sampled_false_negative_rate(data: TrainData, negatives: np.ndarray) -> float:
    """Share of the drawn negatives (``(N,)`` pool indices) that are valid targets of
    their query."""
    return float(data.is_valid_target(np.arange(len(data)), negatives).mean()) if len(data) else 0.0


def neighbours(data: TrainData, i: int) -> np.ndarray:
    """Pool indices in query ``i``'s reference neighbourhood, its own target excluded."""
    ref, m = int(data.reference_idx[i]), len(data.pool_ids)
    if ref < 0 or not len(data.neighbour_keys):
        return np.zeros(0, np.int64)
    lo, hi = np.searchsorted(data.neighbour_keys, [ref * m, (ref + 1) * m])
    images = data.neighbour_keys[lo:hi] - ref * m
    return images[images != data.target_idx[i]]


def neighbourhood_stats(
    queries: torch.Tensor,
    pool: torch.Tensor,
    data: TrainData,
    result: MiningResult,
    epsilon: float,
) -> dict[str, float]:
    """Where each query's neighbours (its reference's other targets) sit relative to the zone.

    ``neighbourhood/``: ``above_gap`` (share with Delta > -epsilon), ``in_zone``,
    ``stored_share`` (share of the stored candidates that are neighbours) and
    ``random_share`` (the same under uniform draws); empty when no query has neighbours.
    """
    rows, images = [], []
    for i in range(len(data)):
        nb = neighbours(data, i)
        rows.append(np.full(len(nb), i, np.int64))
        images.append(nb)
    if not rows or not sum(len(r) for r in rows):
        return {}
    r, im = np.concatenate(rows), np.concatenate(images)
    delta = np.empty(len(r), np.float32)
    for a in range(0, len(r), 8192):  # bounded memory: 8192 x Q x P gathered at a time
        rt = torch.from_numpy(r[a : a + 8192]).to(queries.device)
        it = torch.from_numpy(im[a : a + 8192]).to(queries.device)
        tgt = torch.from_numpy(data.target_idx[r[a : a + 8192]]).to(queries.device)
        q = queries[rt].float()
        s_nb = torch.einsum("kp,kqp->kq", q, pool[it].float()).amax(-1)
        s_t = torch.einsum("kp,kqp->kq", q, pool[tgt].float()).amax(-1)
        delta[a : a + 8192] = (s_nb - s_t).cpu().numpy()
    lower, upper = result.lower[r], result.upper[r]
    in_zone = np.isfinite(lower) & (delta >= lower) & (delta <= upper)
    stored = result.candidates
    has = stored >= 0
    q_rows = np.repeat(np.arange(len(data)), stored.shape[1]).reshape(stored.shape)
    nb_stored = data.in_neighbourhood(q_rows[has], stored[has])
    counts = np.bincount(r, minlength=len(data))
    return {
        "neighbourhood/above_gap": float(np.mean(delta > -epsilon)),
        "neighbourhood/in_zone": float(np.mean(in_zone)),
        "neighbourhood/stored_share": float(nb_stored.mean()) if nb_stored.size else math.nan,
        "neighbourhood/random_share": float(np.mean(counts / np.maximum(result.pool_size, 1))),
    }


def sampled_neighbour_share(data: TrainData, negatives: np.ndarray) -> float:
    """Share of the drawn negatives (``(N,)`` pool indices) in their query's neighbourhood."""
    return (
        float(data.in_neighbourhood(np.arange(len(data)), negatives).mean()) if len(data) else 0.0
    )


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
    """One negative per query, uniform over its stored zone members.

    ValueError when a query has no candidate at all: -1 would index the pool's last image.
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
