"""Multi-target retrieval metrics (several valid targets per query) against hand-worked
cases and a naive full-matrix reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model.retrieval import (
    average_precision_at_k,
    first_valid_rank,
    map_at_k,
    rank_queries,
    recall_any_at_k,
    recall_at_k,
    target_ranks,
    valid_target_ranks,
)


def _hand_gallery() -> tuple[torch.Tensor, torch.Tensor]:
    """Query [1, 0] scores item i by its first coordinate (exact in float64)."""
    scores = [1.0, 0.75, 0.5, 0.5, 0.25, 0.0]
    gallery = torch.tensor([[s, 0.0] for s in scores], dtype=torch.float64)
    queries = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    return queries, gallery


def test_hand_worked_ranks_ties_and_map() -> None:
    queries, gallery = _hand_gallery()
    # query 0: valid {2, 4}; item 2 ties with the non-target 3. query 1: valid {2, 3}, tied
    # with each other. Item 0 (score 1.0) is the reference, removed.
    valid = torch.tensor([[2, 4, -1], [-1, 3, 2]])
    exclude = torch.tensor([0, 0])
    ranks = valid_target_ranks(queries, gallery, valid, exclude, chunk_size=1)
    # q0: item 2 counts {1, 3} (>= 0.5) -> 2; item 4 counts {1, 2, 3} -> 3.
    # q1: item 3 counts {1, 2} -> 2; item 2 counts {1, 3} -> 2 (like target_ranks).
    assert ranks.tolist() == [[2, 3, -1], [-1, 2, 2]]
    # tied valid targets take places 1 and 2 between themselves: the best is at 1
    assert first_valid_rank(ranks).tolist() == [2, 1]
    assert recall_any_at_k(ranks, (1, 2, 3)) == {
        "recall_any@1": 0.0,
        "recall_any@2": 50.0,
        "recall_any@3": 100.0,
    }
    # q0: hits at 1-based places 3 and 4: (1/3 + 2/4) / min(5, 2) = 5/12
    # q1: hits at places 2 and 3: (1/2 + 2/3) / 2 = 7/12
    ap = average_precision_at_k(ranks, [2, 2], 5)
    np.testing.assert_allclose(ap, [5 / 12, 7 / 12], rtol=0, atol=1e-15)
    # K = 2: q0 has no hit in the top 2 -> 0; q1: (1/2) / min(2, 2) = 1/4
    np.testing.assert_allclose(average_precision_at_k(ranks, [2, 2], 2), [0.0, 0.25], atol=1e-15)
    assert map_at_k(ranks, [2, 2], (5,))["map@5"] == pytest.approx(100 * (5 / 12 + 7 / 12) / 2)

    # reference kept: item 0 now outranks everything, every place shifts by one.
    # q0: (1/4 + 2/5) / 2 = 13/40
    kept = valid_target_ranks(queries[:1], gallery, valid[:1])
    assert kept.tolist() == [[3, 4, -1]]
    np.testing.assert_allclose(average_precision_at_k(kept, [2], 5), [13 / 40], atol=1e-15)


def test_hand_worked_map_cut_offs_and_missing_targets() -> None:
    ranks = np.array(
        [
            [0, 2, 7, -1, -1, -1],  # |G| = 3
            [3, -1, -1, -1, -1, -1],  # |G| = 2, one valid target not in the gallery
            [12, -1, -1, -1, -1, -1],  # |G| = 1, ranked 13th
            [0, 1, 2, 3, 4, 5],  # |G| = 6 > K = 5
        ]
    )
    n_valid = [3, 2, 1, 6]
    # K = 5:  q0 (1/1 + 2/3) / 3 = 5/9;  q1 (1/4) / 2 = 1/8;  q2 0;  q3 (5 * 1) / min(5, 6) = 1
    np.testing.assert_allclose(
        average_precision_at_k(ranks, n_valid, 5), [5 / 9, 1 / 8, 0.0, 1.0], atol=1e-15
    )
    # K = 10: q0 adds 3/8: (1 + 2/3 + 3/8) / 3 = 49/72;  q3 (6 * 1) / min(10, 6) = 1
    np.testing.assert_allclose(
        average_precision_at_k(ranks, n_valid, 10), [49 / 72, 1 / 8, 0.0, 1.0], atol=1e-15
    )
    # K = 25: q2 adds 1/13
    np.testing.assert_allclose(
        average_precision_at_k(ranks, n_valid, 25), [49 / 72, 1 / 8, 1 / 13, 1.0], atol=1e-15
    )
    out = map_at_k(ranks, n_valid)
    assert list(out) == ["map@5", "map@10", "map@25", "map@50"]
    assert out["map@5"] == pytest.approx(100 * (5 / 9 + 1 / 8 + 0 + 1) / 4)
    assert out["map@50"] == pytest.approx(100 * (49 / 72 + 1 / 8 + 1 / 13 + 1) / 4)


def _tied_data(
    n: int, m: int, q: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """Small-integer vectors in float64: exact scores with many ties."""
    gen = torch.Generator().manual_seed(seed)
    queries = torch.randint(-1, 2, (n, 4), generator=gen).double()
    gallery = torch.randint(-2, 3, (m, q, 4), generator=gen).double()
    return queries, gallery, gen


def _random_valid(
    n: int, m: int, v: int, exclude: torch.Tensor | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) distinct valid targets (never the excluded item), -1 padding anywhere."""
    valid = torch.full((n, v), -1, dtype=torch.long)
    counts = torch.randint(1, v + 1, (n,), generator=gen)
    for i in range(n):
        perm = torch.randperm(m, generator=gen)
        if exclude is not None:
            perm = perm[perm != exclude[i]]
        slots = torch.randperm(v, generator=gen)[: int(counts[i])]
        valid[i, slots] = perm[: int(counts[i])]
    return valid, counts


def _naive(
    scores: torch.Tensor, valid: torch.Tensor, exclude: torch.Tensor | None, k: int
) -> tuple[list[list[int]], list[float], list[bool]]:
    """Per-query raw ranks, AP@k and any-hit@k from a full ranking in which ties go against
    the valid targets (a valid target after every tied non-target)."""
    raw, aps, hits = [], [], []
    for i in range(scores.shape[0]):
        row = scores[i].tolist()
        items = [j for j in range(len(row)) if exclude is None or j != int(exclude[i])]
        goods = {int(t) for t in valid[i] if t >= 0}
        raw.append(
            [
                sum(1 for j in items if j != int(t) and row[j] >= row[int(t)]) if t >= 0 else -1
                for t in valid[i].tolist()
            ]
        )
        order = sorted(items, key=lambda j: (-row[j], j in goods))
        rel = [j in goods for j in order[:k]]
        ap = sum(sum(rel[: p + 1]) / (p + 1) for p in range(len(rel)) if rel[p])
        aps.append(ap / min(k, len(goods)))
        hits.append(any(rel))
    return raw, aps, hits


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
@pytest.mark.parametrize("with_exclude", [False, True])
def test_matches_naive_full_ranking(chunk_size: int, with_exclude: bool) -> None:
    n, m = 37, 29
    queries, gallery, gen = _tied_data(n, m, 3, seed=chunk_size)
    exclude = torch.randint(0, m, (n,), generator=gen) if with_exclude else None
    if exclude is not None:
        exclude[::4] = -1
    valid, counts = _random_valid(n, m, 5, exclude, gen)
    scores = torch.einsum("np,mqp->nmq", queries, gallery).amax(-1)
    ranks = valid_target_ranks(queries, gallery, valid, exclude, chunk_size=chunk_size)
    for k in (1, 5, 10, 25):
        raw, aps, hits = _naive(scores, valid, exclude, k)
        assert ranks.tolist() == raw
        np.testing.assert_allclose(average_precision_at_k(ranks, counts, k), aps, atol=1e-12)
        assert recall_any_at_k(ranks, (k,))[f"recall_any@{k}"] == pytest.approx(100 * np.mean(hits))
    # the data really has ties between valid targets and other items
    t_scores = scores.gather(1, valid.clamp_min(0))
    tied = (scores.unsqueeze(1) == t_scores.unsqueeze(2)).sum(-1) > 1
    assert bool((tied & (valid >= 0)).any())


@pytest.mark.parametrize("chunk_size", [1, 7, 1000])
def test_one_pass_gives_top_k_target_and_valid_ranks(chunk_size: int) -> None:
    """All three from one pass equal the naive full ranking: the target's and valid
    targets' scores are read before the reference is masked, top-k after."""
    n, m, k = 37, 29, 5
    queries, gallery, gen = _tied_data(n, m, 3, seed=11)
    exclude = torch.randint(0, m, (n,), generator=gen)
    exclude[::4] = -1
    valid, _ = _random_valid(n, m, 4, exclude, gen)
    target = valid.gather(1, (valid >= 0).long().argmax(dim=1, keepdim=True)).squeeze(1)
    out = rank_queries(
        queries,
        gallery,
        k=k,
        target_idx=target,
        valid=valid,
        exclude=exclude,
        chunk_size=chunk_size,
    )
    scores = torch.einsum("np,mqp->nmq", queries, gallery).amax(-1)
    raw, _, _ = _naive(scores, valid, exclude, k)
    assert out.valid is not None and out.valid.tolist() == raw
    masked = scores.clone()
    rows = torch.nonzero(exclude >= 0).squeeze(1)
    masked[rows, exclude[rows]] = float("-inf")
    t = scores.gather(1, target.unsqueeze(1))
    assert out.target is not None
    assert out.target.tolist() == ((masked >= t).sum(dim=1) - 1).tolist()
    assert out.top_scores is not None and out.top_idx is not None
    torch.testing.assert_close(out.top_scores, masked.topk(k, dim=1).values.float())
    # the listed items really carry those scores, and the reference is never listed
    torch.testing.assert_close(masked.gather(1, out.top_idx).float(), out.top_scores)
    assert not bool((out.top_idx == exclude.unsqueeze(1)).any())
    # asking for one part alone gives the same part
    alone = rank_queries(queries, gallery, target_idx=target, exclude=exclude, chunk_size=3)
    assert alone.top_idx is None and alone.valid is None
    assert alone.target is not None and alone.target.tolist() == out.target.tolist()
    with pytest.raises(ValueError, match="nothing to compute"):
        rank_queries(queries, gallery, exclude=exclude)


def test_each_column_is_target_ranks() -> None:
    gen = torch.Generator().manual_seed(3)
    queries = F.normalize(torch.randn(40, 8, generator=gen), dim=-1)
    gallery = F.normalize(torch.randn(50, 4, 8, generator=gen), dim=-1)
    exclude = torch.randint(0, 50, (40,), generator=gen)
    valid, _ = _random_valid(40, 50, 4, exclude, gen)
    ranks = valid_target_ranks(queries, gallery, valid, exclude, chunk_size=16)
    for j in range(valid.shape[1]):
        rows = valid[:, j] >= 0
        ref = target_ranks(queries[rows], gallery, valid[rows, j], exclude[rows], chunk_size=16)
        assert torch.equal(ranks[rows, j], ref)
        assert bool((ranks[~rows, j] == -1).all())


def test_one_valid_target_is_single_target_recall() -> None:
    queries, gallery, gen = _tied_data(60, 45, 2, seed=11)
    exclude = torch.randint(0, 45, (60,), generator=gen)
    target = (exclude + 1 + torch.randint(0, 44, (60,), generator=gen)) % 45
    ks = (1, 5, 10, 50)
    single = recall_at_k(target_ranks(queries, gallery, target, exclude), ks)
    # the target alone, then padded with -1 on either side
    for valid in (
        target.unsqueeze(1),
        torch.stack([torch.full_like(target, -1), target, torch.full_like(target, -1)], 1),
    ):
        ranks = valid_target_ranks(queries, gallery, valid, exclude, chunk_size=9)
        multi = recall_any_at_k(ranks, ks)
        assert list(multi.values()) == list(single.values())
        # with |G| = 1, AP@K is 1 / (rank + 1) inside the top K
        r = target_ranks(queries, gallery, target, exclude).numpy()
        np.testing.assert_allclose(
            average_precision_at_k(ranks, np.ones(60), 10), np.where(r < 10, 1 / (r + 1), 0.0)
        )


def test_padding_only_rows_and_empty_input() -> None:
    ranks = np.array([[-1, -1], [0, -1]])
    assert first_valid_rank(ranks).tolist() == [-1, 0]
    assert recall_any_at_k(ranks, (1,)) == {"recall_any@1": 50.0}
    # a query whose only valid target is missing from the gallery: AP 0
    np.testing.assert_allclose(average_precision_at_k(ranks, [1, 1], 5), [0.0, 1.0])
    empty = np.zeros((0, 3), dtype=np.int64)
    assert np.isnan(recall_any_at_k(empty, (1,))["recall_any@1"])
    assert np.isnan(map_at_k(empty, np.zeros(0), (5,))["map@5"])


def test_rejects_bad_valid_targets() -> None:
    queries, gallery = _hand_gallery()
    with pytest.raises(ValueError, match="twice"):
        valid_target_ranks(queries, gallery, torch.tensor([[2, 2], [1, -1]]))
    with pytest.raises(ValueError, match="exclude equals"):
        valid_target_ranks(queries, gallery, torch.tensor([[2, 0], [1, -1]]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="out of range"):
        valid_target_ranks(queries, gallery, torch.tensor([[6, -1], [1, -1]]))
    with pytest.raises(ValueError, match="long"):
        valid_target_ranks(queries, gallery, torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError, match="n_valid"):
        average_precision_at_k(np.array([[0, 3]]), [1], 5)
    with pytest.raises(ValueError, match="n_valid"):
        average_precision_at_k(np.array([[0, -1]]), [0], 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    # small integers in float64: exact on both devices, so the ranks must agree exactly
    queries, gallery, gen = _tied_data(300, 500, 8, seed=5)
    exclude = torch.randint(0, 500, (300,), generator=gen)
    valid, counts = _random_valid(300, 500, 6, exclude, gen)
    cpu = valid_target_ranks(queries, gallery, valid, exclude, chunk_size=64)
    gpu = valid_target_ranks(queries, gallery, valid, exclude, chunk_size=64, device="cuda")
    assert torch.equal(cpu, gpu)
    held = valid_target_ranks(queries.cuda(), gallery.cuda(), valid.cuda(), exclude.cuda())
    assert held.device.type == "cpu" and torch.equal(cpu, held)
    assert map_at_k(cpu, counts) == map_at_k(gpu, counts)
