"""Chunked max-over-tokens retrieval: scores, top-k, target ranks and CIR metrics.

Single-target metrics (Recall@K, CIRR, FashionIQ) and multi-target ones for queries with
several valid targets (recall of any valid target, CIRCO's mAP@K), all from ranks.

Queries (N, P), galleries (M, Q, P) or (M, P), L2-normalised; each function scores
``chunk_size`` queries at a time (memory O(chunk_size * M)) on ``device`` (default: the
queries'), in ``amp_dtype`` on CUDA, and returns CPU tensors. Ties count against the target.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "average_precision_at_k",
    "breakdown_by_group",
    "cirr_metrics_from_ranks",
    "fashioniq_metrics_from_ranks",
    "first_valid_rank",
    "map_at_k",
    "rank_queries",
    "Rankings",
    "recall_any_at_k",
    "recall_at_k",
    "subset_ranks",
    "subset_topk",
    "target_ranks",
    "topk",
    "valid_target_ranks",
]


def _resolve_device(queries: torch.Tensor, device: str | torch.device | None) -> torch.device:
    if device is None:
        return queries.device
    return torch.device(device)


def _compute_dtype(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> torch.dtype:
    """Matmul dtype: ``amp_dtype`` on CUDA, else the promoted float dtype of the inputs."""
    if amp_dtype is not None and device.type == "cuda":
        return amp_dtype
    dtype = torch.promote_types(queries.dtype, gallery.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return dtype


class _Scorer:
    """Scores query chunks against a gallery held on the compute device.

    The gallery is a flat (M * Q, P) token matrix scored in blocks of whole images, so
    neither a (c, M, Q) tensor nor a transposed copy of the gallery is ever built.
    """

    _MIN_BLOCK_TOKENS = 8192

    def __init__(self, gallery: torch.Tensor, device: torch.device, dtype: torch.dtype) -> None:
        if gallery.ndim == 2:
            gallery = gallery.unsqueeze(1)
        if gallery.ndim != 3:
            raise ValueError(f"gallery must be (M, Q, P) or (M, P); got {tuple(gallery.shape)}")
        self.m, self.q, self.p = gallery.shape
        self.gallery = gallery.to(device=device, dtype=dtype).contiguous()
        self.device = device
        self.dtype = dtype
        # One block's token count ~ max(M, 8192) (at least one image per block): big
        # enough for an efficient GEMM, still O(chunk x M) for realistic galleries.
        self.items_per_block = max(1, max(self.m, self._MIN_BLOCK_TOKENS) // max(1, self.q))

    def __call__(self, q_chunk: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """(c, P) queries (any device / dtype) -> (c, M) scores on the compute device."""
        qc = q_chunk.to(device=self.device, dtype=self.dtype)
        if qc.shape[-1] != self.p:
            raise ValueError(f"query dim {qc.shape[-1]} != gallery dim {self.p}")
        out = torch.empty((qc.shape[0], self.m), device=self.device, dtype=out_dtype)
        for start in range(0, self.m, self.items_per_block):
            stop = min(self.m, start + self.items_per_block)
            tokens = self.gallery[start:stop].reshape(-1, self.p)  # ((stop-start)*Q, P) view
            block = qc @ tokens.T  # (c, (stop-start)*Q)
            out[:, start:stop] = block.view(qc.shape[0], stop - start, self.q).amax(dim=-1)
        return out


def _iter_scores(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    chunk_size: int,
    device: str | torch.device | None,
    amp_dtype: torch.dtype | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, scores (c, M))``, left on the compute device in fp32 (fp64 inputs: fp64)."""
    if queries.ndim != 2:
        raise ValueError(f"queries must be (N, P); got {tuple(queries.shape)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    dev = _resolve_device(queries, device)
    dtype = _compute_dtype(queries, gallery, dev, amp_dtype)
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scorer = _Scorer(gallery, dev, dtype)
    with torch.no_grad():
        for start in range(0, queries.shape[0], chunk_size):
            yield start, scorer(queries[start : start + chunk_size], out_dtype)


def _check_index(name: str, idx: torch.Tensor | None, n: int, m: int, allow_neg: bool) -> None:
    if idx is None:
        return
    if idx.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},); got {tuple(idx.shape)}")
    if idx.numel() == 0:
        return
    lo = -1 if allow_neg else 0
    if int(idx.min()) < lo or int(idx.max()) >= m:
        raise ValueError(f"{name} out of range [{lo}, {m})")


def _gallery_size(gallery: torch.Tensor) -> int:
    return int(gallery.shape[0])


def _mask_excluded(scores: torch.Tensor, exclude: torch.Tensor | None, start: int) -> None:
    """In place: ``scores[r, exclude[start + r]] = -inf`` where ``exclude >= 0``."""
    if exclude is None:
        return
    ex = exclude[start : start + scores.shape[0]].to(scores.device)
    rows = torch.nonzero(ex >= 0).squeeze(1)
    if rows.numel():
        scores[rows, ex[rows]] = float("-inf")


@dataclass(frozen=True)
class Rankings:
    """What one scoring pass over the gallery gives (CPU tensors; ``None``: not asked for).

    ``top_scores`` / ``top_idx``: (N, k) best items, best first; ``target``: (N,) rank of
    each query's target; ``valid``: (N, V) rank of each valid target, -1 padding.
    """

    top_scores: torch.Tensor | None = None
    top_idx: torch.Tensor | None = None
    target: torch.Tensor | None = None
    valid: torch.Tensor | None = None


def rank_queries(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    *,
    k: int | None = None,
    target_idx: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> Rankings:
    """Top-``k`` items, the target's rank and every valid target's rank, from **one**
    scoring pass (each score chunk serves all three; the gallery is scored once).

    Each part is exactly what :func:`topk`, :func:`target_ranks` and
    :func:`valid_target_ranks` return for the same arguments (those call this).
    """
    if k is None and target_idx is None and valid is None:
        raise ValueError("rank_queries needs k, target_idx or valid: nothing to compute")
    n, m = queries.shape[0], _gallery_size(gallery)
    _check_index("exclude", exclude, n, m, allow_neg=True)
    if k is not None:
        limit = m - 1 if exclude is not None and bool((exclude >= 0).any()) else m
        if not 1 <= k <= limit:
            raise ValueError(f"k={k} must be in [1, {limit}]")
    if target_idx is not None:
        _check_index("target_idx", target_idx, n, m, allow_neg=False)
        if exclude is not None and bool((exclude == target_idx).any()):
            raise ValueError("exclude equals target_idx for some queries")
    if valid is not None:
        _check_valid(valid, exclude, n, m)
    top_s = torch.empty((n, k), dtype=torch.float32) if k is not None else None
    top_i = torch.empty((n, k), dtype=torch.long) if k is not None else None
    t_ranks = torch.empty(n, dtype=torch.long) if target_idx is not None else None
    v_ranks = torch.empty(valid.shape, dtype=torch.long) if valid is not None else None
    for start, scores in _iter_scores(queries, gallery, chunk_size, device, amp_dtype):
        c = scores.shape[0]
        rows = slice(start, start + c)
        # the target's and valid targets' own scores are read before the masking
        t_score = None
        if target_idx is not None:
            t_score = scores.gather(1, target_idx[rows].to(scores.device).unsqueeze(1))
        v = v_scores = None
        if valid is not None:
            v = valid[rows].to(scores.device)
            v_scores = scores.gather(1, v.clamp_min(0))  # (c, V)
        _mask_excluded(scores, exclude, start)
        if top_s is not None and top_i is not None:
            vals, idx = torch.topk(scores, k, dim=1)  # type: ignore[arg-type]
            top_s[rows] = vals.float().cpu()
            top_i[rows] = idx.cpu()
        if t_ranks is not None and t_score is not None:
            # [design] pessimistic ties: every other item scoring >= the target counts
            t_ranks[rows] = ((scores >= t_score).sum(dim=1) - 1).cpu()
        if v_ranks is not None and v is not None and v_scores is not None:
            # one column at a time: memory O(c * M), never (c, V, M)
            r = torch.stack(
                [(scores >= v_scores[:, j : j + 1]).sum(dim=1) - 1 for j in range(v.shape[1])],
                dim=1,
            )
            v_ranks[rows] = r.masked_fill(v < 0, -1).cpu()
    return Rankings(top_s, top_i, t_ranks, v_ranks)


def topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` items per query, best first: ``(scores (N, k), indices (N, k))`` on CPU.

    ``exclude``: (N,) gallery index removed from each ranking (the CIRR reference), -1 for
    none; then ``k <= M - 1``. The order among exactly tied scores is ``torch.topk``'s.
    """
    out = rank_queries(
        queries,
        gallery,
        k=k,
        exclude=exclude,
        chunk_size=chunk_size,
        device=device,
        amp_dtype=amp_dtype,
    )
    assert out.top_scores is not None and out.top_idx is not None
    return out.top_scores, out.top_idx


def target_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    target_idx: torch.Tensor,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N,) 0-based rank of each query's ``target_idx`` in the full gallery ranking.

    [design] Pessimistic ties: every other non-excluded item scoring >= the target counts.
    ``exclude`` as in :func:`topk`; it must differ from the target.
    """
    out = rank_queries(
        queries,
        gallery,
        target_idx=target_idx,
        exclude=exclude,
        chunk_size=chunk_size,
        device=device,
        amp_dtype=amp_dtype,
    )
    assert out.target is not None
    return out.target


def _check_valid(valid: torch.Tensor, exclude: torch.Tensor | None, n: int, m: int) -> None:
    if valid.ndim != 2 or valid.shape[0] != n or valid.shape[1] < 1:
        raise ValueError(f"valid must be (N, V) with N={n}, V >= 1; got {tuple(valid.shape)}")
    if valid.dtype != torch.long:
        raise ValueError(f"valid must be a long tensor; got {valid.dtype}")
    if valid.numel() == 0:
        return
    if int(valid.min()) < -1 or int(valid.max()) >= m:
        raise ValueError(f"valid out of range [-1, {m})")
    srt = valid.sort(dim=1).values
    if bool(((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any()):
        raise ValueError("a query lists the same valid target twice")
    if exclude is not None and bool(((valid == exclude.unsqueeze(1)) & (valid >= 0)).any()):
        raise ValueError("exclude equals a valid target for some queries")


def valid_target_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    valid: torch.Tensor,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N, V) 0-based rank of every valid target in the full gallery ranking; -1 for padding.

    ``valid``: (N, V) long gallery indices of each query's valid targets, -1 padding, no
    repeats. Each entry is ranked exactly as :func:`target_ranks` ranks a single target:
    every other non-excluded item scoring >= it counts, other valid targets included
    (:func:`first_valid_rank` and the metrics below undo that among valid targets).
    ``exclude`` as in :func:`topk`; it must differ from every valid target.
    """
    out = rank_queries(
        queries,
        gallery,
        valid=valid,
        exclude=exclude,
        chunk_size=chunk_size,
        device=device,
        amp_dtype=amp_dtype,
    )
    assert out.valid is not None
    return out.valid


def _tie_resolved_positions(ranks_valid: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, V) positions of the valid targets in one consistent ranking, ascending per row.

    Ranks from :func:`valid_target_ranks` count tied valid targets against each other: g
    valid targets tied at rank r all read r. Ties with other items stay against them, but
    among themselves they take the g places r - g + 1 .. r (which one takes which place
    changes neither recall nor AP). Padding (< 0) sorts last as int64 max.
    """
    r = np.asarray(ranks_valid, dtype=np.int64)
    if r.ndim != 2:
        raise ValueError(f"ranks_valid must be (N, V); got shape {r.shape}")
    big = np.iinfo(np.int64).max
    srt = np.sort(np.where(r >= 0, r, big), axis=1)
    v = srt.shape[1]
    col = np.arange(v)
    is_last = np.ones_like(srt, dtype=bool)  # last entry of its group of equal ranks
    is_last[:, :-1] = srt[:, 1:] != srt[:, :-1]
    last = np.minimum.accumulate(np.where(is_last, col, v)[:, ::-1], axis=1)[:, ::-1]
    return np.where(srt < big, srt - (last - col), big)


def first_valid_rank(ranks_valid: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) 0-based position of each query's best-ranked valid target; -1 if it has none.

    A tie between valid targets does not count against them (see ``valid_target_ranks``).
    """
    first = _tie_resolved_positions(ranks_valid)[:, 0]
    return np.where(first == np.iinfo(np.int64).max, -1, first)


def recall_any_at_k(
    ranks_valid: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10, 50)
) -> dict[str, float]:
    """``{"recall_any@{k}": percent of queries with a valid target in the top k}``.

    From (N, V) :func:`valid_target_ranks`; a query with no ranked valid target (all
    padding) counts as a miss. NaN when there are no queries.
    """
    first = first_valid_rank(ranks_valid)
    out: dict[str, float] = {}
    for k in ks:
        hit = (first >= 0) & (first < k)
        out[f"recall_any@{k}"] = float(hit.mean() * 100.0) if first.size else math.nan
    return out


def average_precision_at_k(
    ranks_valid: torch.Tensor | np.ndarray, n_valid: torch.Tensor | np.ndarray, k: int
) -> np.ndarray:
    """(N,) CIRCO's AP@K per query, in [0, 1], from the valid targets' ranks alone.

    AP@K = (1 / min(K, |G|)) * sum over positions p <= K of P@p * rel(p), G the query's
    valid targets: the i-th valid target (1-based) at 0-based position r adds i / (r + 1).
    ``n_valid``: (N,) |G| >= 1, at least the ranked (non-padding) entries; a larger value
    counts the missing targets (e.g. absent from the gallery) as never retrieved.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    pos = _tie_resolved_positions(ranks_valid)
    n_g = np.asarray(n_valid, dtype=np.int64).reshape(-1)
    if n_g.shape[0] != pos.shape[0]:
        raise ValueError(f"{n_g.shape[0]} n_valid for {pos.shape[0]} queries")
    ranked = (pos < np.iinfo(np.int64).max).sum(axis=1)
    if pos.shape[0] and (n_g.min() < 1 or bool((n_g < ranked).any())):
        raise ValueError("n_valid must be >= 1 and >= the ranked valid targets of each query")
    hits_before = np.arange(1, pos.shape[1] + 1)  # valid targets at or above each position
    inside = pos < k
    prec = np.where(inside, hits_before / (np.where(inside, pos, 0) + 1.0), 0.0)
    return prec.sum(axis=1) / np.minimum(k, n_g)


def map_at_k(
    ranks_valid: torch.Tensor | np.ndarray,
    n_valid: torch.Tensor | np.ndarray,
    ks: Sequence[int] = (5, 10, 25, 50),
) -> dict[str, float]:
    """``{"map@{k}": mean AP@K over queries, percent}`` (CIRCO's mAP@K); NaN when empty."""
    out: dict[str, float] = {}
    for k in ks:
        ap = average_precision_at_k(ranks_valid, n_valid, k)
        out[f"map@{k}"] = float(ap.mean() * 100.0) if ap.size else math.nan
    return out


def recall_at_k(
    ranks: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5, 10, 50)
) -> dict[str, float]:
    """``{"recall@{k}": percent of ranks < k}`` from (N,) 0-based ranks; NaN when empty."""
    r = torch.as_tensor(np.asarray(ranks)).reshape(-1)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float((r < k).double().mean() * 100.0) if r.numel() else math.nan
    return out


def _subset_scores(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    subset_idx: torch.Tensor,
    exclude: torch.Tensor | None,
    chunk_size: int,
    device: str | torch.device | None,
    amp_dtype: torch.dtype | None,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, scores (c, S), valid (c, S))`` over the subset members only.

    Padding (-1) and the excluded item are invalid (score -inf); memory O(c * S * Q * P).
    """
    n, m = queries.shape[0], _gallery_size(gallery)
    if subset_idx.ndim != 2 or subset_idx.shape[0] != n:
        raise ValueError(f"subset_idx must be (N, S) with N={n}; got {tuple(subset_idx.shape)}")
    if subset_idx.numel() and (int(subset_idx.min()) < -1 or int(subset_idx.max()) >= m):
        raise ValueError(f"subset_idx out of range [-1, {m})")
    _check_index("exclude", exclude, n, m, allow_neg=True)
    dev = _resolve_device(queries, device)
    dtype = _compute_dtype(queries, gallery, dev, amp_dtype)
    g = gallery.unsqueeze(1) if gallery.ndim == 2 else gallery
    g = g.to(device=dev, dtype=dtype)
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            sub = subset_idx[start : start + chunk_size].to(dev)
            valid = sub >= 0
            if exclude is not None:
                valid &= sub != exclude[start : start + chunk_size].to(dev).unsqueeze(1)
            members = g[sub.clamp_min(0)]  # (c, S, Q, P)
            qc = queries[start : start + chunk_size].to(device=dev, dtype=dtype)
            scores = torch.einsum("cp,csqp->csq", qc, members).amax(dim=-1).float()
            scores = scores.masked_fill(~valid, float("-inf"))
            yield start, scores, valid


def subset_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    target_idx: torch.Tensor,
    subset_idx: torch.Tensor,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N,) 0-based rank of the target within its subset (CIRR ``img_set.members``).

    ``subset_idx``: (N, S) gallery indices, -1 padding. Padding and ``exclude`` (the
    reference) are removed first; pessimistic ties. ValueError if a target is not a member.
    """
    n = queries.shape[0]
    _check_index("target_idx", target_idx, n, _gallery_size(gallery), allow_neg=False)
    ranks = torch.empty(n, dtype=torch.long)
    for start, scores, valid in _subset_scores(
        queries, gallery, subset_idx, exclude, chunk_size, device, amp_dtype
    ):
        c = scores.shape[0]
        sub = subset_idx[start : start + c].to(scores.device)
        tgt = target_idx[start : start + c].to(scores.device).unsqueeze(1)
        is_t = (sub == tgt) & valid
        if not bool(is_t.any(dim=1).all()):
            bad = int(torch.nonzero(~is_t.any(dim=1))[0, 0]) + start
            raise ValueError(f"target of query {bad} is not in its subset (after exclusion)")
        t_score = scores.masked_fill(~is_t, float("-inf")).amax(dim=1, keepdim=True)
        others = valid & ~is_t
        higher = ((scores > t_score) & others).sum(dim=1)
        equal = ((scores == t_score) & others).sum(dim=1)
        ranks[start : start + c] = (higher + equal).cpu()
    return ranks


def subset_topk(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    subset_idx: torch.Tensor,
    k: int = 3,
    exclude: torch.Tensor | None = None,
    chunk_size: int = 256,
    device: str | torch.device | None = None,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(N, k) best subset members per query, best first; -1 where fewer than ``k`` are valid."""
    if not 1 <= k <= subset_idx.shape[1]:
        raise ValueError(f"k={k} must be in [1, {subset_idx.shape[1]}]")
    out = torch.empty((queries.shape[0], k), dtype=torch.long)
    for start, scores, _valid in _subset_scores(
        queries, gallery, subset_idx, exclude, chunk_size, device, amp_dtype
    ):
        c = scores.shape[0]
        vals, pos = torch.topk(scores, k, dim=1)
        idx = subset_idx[start : start + c].to(scores.device).gather(1, pos)
        idx = idx.masked_fill(torch.isneginf(vals), -1)
        out[start : start + c] = idx.cpu()
    return out


def cirr_metrics_from_ranks(
    ranks: torch.Tensor,
    sub_ranks: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10, 50),
    subset_ks: Sequence[int] = (1, 2, 3),
) -> dict[str, float]:
    """CIRR metrics (percent) from ranks with the reference removed; ``avg`` = (R@5 + Rs@1) / 2."""
    out = recall_at_k(ranks, ks)
    out.update(
        {
            f"recall_subset@{k}": v
            for k, v in zip(subset_ks, recall_at_k(sub_ranks, subset_ks).values(), strict=True)
        }
    )
    if "recall@5" in out and "recall_subset@1" in out:
        out["avg"] = (out["recall@5"] + out["recall_subset@1"]) / 2.0
    return out


def fashioniq_metrics_from_ranks(
    per_category_ranks: Mapping[str, torch.Tensor | np.ndarray], ks: Sequence[int] = (10, 50)
) -> dict[str, float]:
    """FashionIQ metrics from per-category ranks (reference not removed).

    ``{cat}/recall@k``, ``mean/recall@k`` (unweighted over categories, as published results
    report it) and ``avg``, the mean of the ``mean/recall@k`` ((R@10 + R@50) / 2).
    """
    if not per_category_ranks:
        raise ValueError("no categories")
    out: dict[str, float] = {}
    for cat, ranks in per_category_ranks.items():
        for key, val in recall_at_k(ranks, ks).items():
            out[f"{cat}/{key}"] = val
    cats = list(per_category_ranks)
    means = []
    for k in ks:
        mean_k = float(np.mean([out[f"{c}/recall@{k}"] for c in cats]))
        out[f"mean/recall@{k}"] = mean_k
        means.append(mean_k)
    out["avg"] = float(np.mean(means))
    return out


def breakdown_by_group(
    ranks: torch.Tensor | np.ndarray, groups: Sequence[str], ks: Sequence[int] = (1, 5, 10, 50)
) -> dict[str, float]:
    """Recall@K per group (e.g. edit type): ``{group}/recall@{k}``, ``{group}/count``."""
    r = np.asarray(ranks).reshape(-1)
    g = np.asarray(list(groups), dtype=object)
    if g.shape[0] != r.shape[0]:
        raise ValueError(f"{g.shape[0]} groups for {r.shape[0]} ranks")
    out: dict[str, float] = {}
    for name in sorted({str(x) for x in g}):
        sel = r[g == name]
        for key, val in recall_at_k(sel, ks).items():
            out[f"{name}/{key}"] = val
        out[f"{name}/count"] = float(sel.shape[0])
    return out
