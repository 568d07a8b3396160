"""Tests for the chunked retrieval functions against naive full-matrix references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model.cirr_submission import cirr_submission, validate_cirr_submission
from dqe_cir_pipeline.model.retrieval import (
    _iter_scores,
    breakdown_by_group,
    cirr_metrics_from_ranks,
    fashioniq_metrics_from_ranks,
    recall_at_k,
    subset_ranks,
    subset_topk,
    target_ranks,
    topk,
)


def _data(n: int, m: int, q: int, p: int, seed: int, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    queries = F.normalize(torch.randn(n, p, generator=gen, dtype=dtype), dim=-1)
    gallery = F.normalize(torch.randn(m, q, p, generator=gen, dtype=dtype), dim=-1)
    return queries, gallery, gen


def _naive_scores(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Full (N, M, Q) tensor, then max over tokens: the definition, no chunking."""
    return torch.einsum("np,mqp->nmq", queries, gallery).amax(-1)


def _naive_ranks(scores: torch.Tensor, target: torch.Tensor, exclude: torch.Tensor | None):
    ranks = []
    for i in range(scores.shape[0]):
        row = scores[i].clone()
        if exclude is not None and exclude[i] >= 0:
            row[exclude[i]] = float("nan")
        order = [j for j in np.argsort(-row.numpy(), kind="stable") if not torch.isnan(row[j])]
        ranks.append(order.index(int(target[i])))
    return torch.tensor(ranks)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunked_matches_naive(chunk_size: int) -> None:
    queries, gallery, gen = _data(53, 71, 5, 12, seed=1)
    full = _naive_scores(queries, gallery)
    chunks = list(_iter_scores(queries, gallery, chunk_size, None, None))
    assert [start for start, _ in chunks] == list(range(0, 53, chunk_size))
    rows = torch.cat([s.cpu() for _, s in chunks])
    torch.testing.assert_close(rows, full)

    target = torch.randint(0, 71, (53,), generator=gen)
    exclude = (target + 1 + torch.randint(0, 70, (53,), generator=gen)) % 71
    exclude[::5] = -1
    ranks = target_ranks(queries, gallery, target, exclude, chunk_size=chunk_size)
    assert torch.equal(ranks, _naive_ranks(full, target, exclude))
    assert torch.equal(
        target_ranks(queries, gallery, target, None, chunk_size=chunk_size),
        _naive_ranks(full, target, None),
    )

    vals, idx = topk(queries, gallery, 10, exclude, chunk_size=chunk_size)
    masked = full.clone()
    rows_ex = torch.nonzero(exclude >= 0).squeeze(1)
    masked[rows_ex, exclude[rows_ex]] = float("-inf")
    ref_vals, ref_idx = masked.sort(dim=1, descending=True)
    assert torch.equal(idx, ref_idx[:, :10])
    torch.testing.assert_close(vals, ref_vals[:, :10].float())
    assert not (idx == exclude.unsqueeze(1)).any()


def _cirr_metrics(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    target_idx: torch.Tensor,
    reference_idx: torch.Tensor,
    subset_idx: torch.Tensor,
    chunk_size: int,
) -> dict[str, float]:
    """The CIRR protocol as ``model.evaluate`` composes it: reference removed twice."""
    ranks = target_ranks(queries, gallery, target_idx, reference_idx, chunk_size)
    sub = subset_ranks(
        queries, gallery, target_idx, subset_idx, reference_idx, max(1, chunk_size // 4)
    )
    return cirr_metrics_from_ranks(ranks, sub)


def test_float32_and_2d_gallery() -> None:
    queries, gallery, _ = _data(20, 30, 1, 8, seed=2, dtype=torch.float32)
    t = torch.arange(20)
    assert torch.equal(
        target_ranks(queries, gallery, t, chunk_size=3),
        target_ranks(queries, gallery[:, 0], t, chunk_size=20),
    )


def test_hand_worked_ranking_reference_removal_and_ties() -> None:
    # P = 2, Q = 2. Query e0. Token maxima give scores [0.9, 0.5, 0.7, 0.5, 0.1].
    q = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor(
        [
            [[0.9, 0.0], [0.0, 1.0]],  # 0: 0.9 (reference)
            [[0.5, 0.0], [0.1, 0.0]],  # 1: 0.5 (target)
            [[0.2, 0.0], [0.7, 0.0]],  # 2: 0.7 (max over tokens picks the 2nd)
            [[0.5, 0.0], [0.5, 0.0]],  # 3: 0.5 (exact tie with target)
            [[0.1, 0.0], [0.0, 0.0]],  # 4: 0.1
        ]
    )
    t = torch.tensor([1])
    # strictly higher: {0, 2} = 2, tie: {3} = 1 -> pessimistic rank 3
    assert target_ranks(q, gallery, t).tolist() == [3]
    # removing the reference (0) lifts the target by one
    assert target_ranks(q, gallery, t, torch.tensor([0])).tolist() == [2]
    # removing the tied item
    assert target_ranks(q, gallery, t, torch.tensor([3])).tolist() == [2]
    vals, idx = topk(q, gallery, 2, torch.tensor([0]))
    assert idx.tolist() == [[2, 1]] or idx.tolist() == [[2, 3]]
    assert torch.allclose(vals, torch.tensor([[0.7, 0.5]]))
    # subset {0 (ref), 1 (target), 3 (tie), 4}; ref removed -> tie counts -> rank 1
    sub = torch.tensor([[0, 1, 3, 4]])
    assert subset_ranks(q, gallery, t, sub, torch.tensor([0])).tolist() == [1]
    # subset without the tie, padded with -1
    sub2 = torch.tensor([[0, 1, 4, -1]])
    assert subset_ranks(q, gallery, t, sub2, torch.tensor([0])).tolist() == [0]
    assert subset_ranks(q, gallery, t, sub2, None).tolist() == [1]
    assert subset_topk(q, gallery, sub2, k=3, exclude=torch.tensor([0])).tolist() == [[1, 4, -1]]
    with pytest.raises(ValueError, match="not in its subset"):
        subset_ranks(q, gallery, t, torch.tensor([[0, 2, 3, 4]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="exclude equals"):
        target_ranks(q, gallery, t, t)


def test_recall_at_k() -> None:
    ranks = torch.tensor([0, 1, 4, 5, 49, 50, 100, 0])
    r = recall_at_k(ranks, (1, 5, 10, 50))
    assert r == {"recall@1": 25.0, "recall@5": 50.0, "recall@10": 62.5, "recall@50": 75.0}


def test_subset_ranks_match_naive_in_chunks() -> None:
    queries, gallery, gen = _data(40, 60, 4, 10, seed=3)
    full = _naive_scores(queries, gallery)
    subset = torch.stack([torch.randperm(60, generator=gen)[:6] for _ in range(40)])
    ref, tgt = subset[:, 0], subset[:, 1]
    expected = []
    for i in range(40):
        others = subset[i, 2:]
        expected.append(int((full[i, others] >= full[i, tgt[i]]).sum()))
    for cs in (1, 9, 64):
        assert subset_ranks(queries, gallery, tgt, subset, ref, chunk_size=cs).tolist() == expected
    top = subset_topk(queries, gallery, subset, 3, ref, chunk_size=7)
    for i in range(40):
        members = subset[i, 1:]
        order = members[full[i, members].argsort(descending=True)][:3]
        assert top[i].tolist() == order.tolist()


def test_chance_levels_cirr_like() -> None:
    # Random embeddings: the target is exchangeable with the 4 other non-reference
    # members, so Rs@1 ~ 1/5 = 20 %; R@K ~ K / (M - 1) with the reference removed.
    n, m = 3000, 400
    queries, gallery, gen = _data(n, m, 4, 16, seed=4, dtype=torch.float32)
    subset = torch.stack([torch.randperm(m, generator=gen)[:6] for _ in range(n)])
    ref, tgt = subset[:, 0], subset[:, 1]
    res = _cirr_metrics(queries, gallery, tgt, ref, subset, chunk_size=512)
    assert set(res) == {
        "recall@1",
        "recall@5",
        "recall@10",
        "recall@50",
        "recall_subset@1",
        "recall_subset@2",
        "recall_subset@3",
        "avg",
    }
    assert abs(res["recall_subset@1"] - 20.0) < 3.0
    assert abs(res["recall_subset@2"] - 40.0) < 4.0
    assert abs(res["recall_subset@3"] - 60.0) < 4.0
    for k in (5, 10, 50):
        chance = k / (m - 1)
        std = 100.0 * np.sqrt(chance * (1 - chance) / n)
        assert abs(res[f"recall@{k}"] - 100.0 * chance) < 4.0 * std + 0.5
    assert res["avg"] == pytest.approx((res["recall@5"] + res["recall_subset@1"]) / 2)


def test_fashioniq_arithmetic_on_hand_made_ranks() -> None:
    ranks = {
        "dress": np.array([0, 9, 10, 49]),  # R@10 50, R@50 100
        "shirt": np.array([60, 5, 70, 80]),  # R@10 25, R@50 25
        "toptee": np.array([1, 2, 3, 100]),  # R@10 75, R@50 75
    }
    out = fashioniq_metrics_from_ranks(ranks)
    assert out["dress/recall@10"] == 50.0 and out["dress/recall@50"] == 100.0
    assert out["shirt/recall@10"] == 25.0 and out["shirt/recall@50"] == 25.0
    assert out["mean/recall@10"] == pytest.approx(50.0)
    assert out["mean/recall@50"] == pytest.approx(200.0 / 3)
    assert out["avg"] == pytest.approx((50.0 + 200.0 / 3) / 2)


def test_fashioniq_reference_not_removed() -> None:
    # the query sits exactly on image 0 (reference-like); the target is image 1.
    q = torch.tensor([[1.0, 0.0]])
    gallery = torch.tensor([[[1.0, 0.0]], [[0.8, 0.6]], [[0.0, 1.0]]])
    ranks = target_ranks(q, gallery, torch.tensor([1]), None)
    assert ranks.tolist() == [1]
    out = fashioniq_metrics_from_ranks({"dress": ranks}, ks=(1, 2))
    assert out["dress/recall@1"] == 0.0 and out["dress/recall@2"] == 100.0
    assert out["avg"] == 50.0


def test_cirr_from_ranks_and_breakdown() -> None:
    out = cirr_metrics_from_ranks(torch.tensor([0, 3, 10, 60]), torch.tensor([0, 1, 2, 0]))
    assert out["recall@5"] == 50.0 and out["recall_subset@1"] == 50.0 and out["avg"] == 50.0
    br = breakdown_by_group(np.array([0, 3, 0, 7]), ["color", "shape", "color", "shape"], ks=(1, 5))
    assert br == {
        "color/recall@1": 100.0,
        "color/recall@5": 100.0,
        "color/count": 2.0,
        "shape/recall@1": 0.0,
        "shape/recall@5": 50.0,
        "shape/count": 2.0,
    }


def _valid_submission():
    names = [f"img{i}" for i in range(60)]
    pair_ids = [10, 11]
    refs = {10: "img0", 11: "img1"}
    ranked = [names[1:51], names[2:52]]
    sub = [["img5", "img6", "img7"], ["img8", "img9", "img10"]]
    rec, subj = cirr_submission(pair_ids, ranked, sub)
    return rec, subj, pair_ids, refs


def test_cirr_submission_valid_roundtrip() -> None:
    rec, subj, pair_ids, refs = _valid_submission()
    assert rec["version"] == "rc2" and rec["metric"] == "recall" and len(rec["10"]) == 50
    assert subj["metric"] == "recall_subset" and subj["11"] == ["img8", "img9", "img10"]
    validate_cirr_submission(json.loads(json.dumps(rec)), subj, pair_ids, refs)


@pytest.mark.parametrize(
    ("defect", "message"),
    [
        ("missing", "missing pairid 11"),
        ("length", "has 49 names"),
        ("reference", "contains its reference 'img0'"),
        ("duplicate", "duplicate names"),
        ("version", "version"),
        ("size", "exceeds"),
        ("extra", "unexpected pairid 99"),
    ],
)
def test_cirr_submission_validation_catches(defect: str, message: str) -> None:
    rec, subj, pair_ids, refs = _valid_submission()
    max_bytes = 5 * 1024 * 1024
    if defect == "missing":
        del rec["11"]
    elif defect == "length":
        rec["10"] = rec["10"][:49]
    elif defect == "reference":
        rec["10"][3] = "img0"
    elif defect == "duplicate":
        subj["11"] = ["img8", "img8", "img9"]
    elif defect == "version":
        subj["version"] = "rc1"
    elif defect == "size":
        max_bytes = 500
    elif defect == "extra":
        rec["99"] = rec["10"]
    with pytest.raises(ValueError, match=message):
        validate_cirr_submission(rec, subj, pair_ids, refs, max_bytes=max_bytes)


def test_validation_subset_members_and_real_size_limit() -> None:
    rec, subj, pair_ids, refs = _valid_submission()
    members = {10: ["img0", "img5", "img6", "img7"], 11: ["img1", "img8", "img9", "img11"]}
    with pytest.raises(ValueError, match="outside its subset"):
        validate_cirr_submission(rec, subj, pair_ids, refs, members=members)
    # default 5 MB limit: a 120k-pair payload with long names is too big
    big = {"version": "rc2", "metric": "recall"}
    ids = list(range(3000))
    for i in ids:
        big[str(i)] = [f"train-{i}-{j}-" + "x" * 30 for j in range(50)]
    with pytest.raises(ValueError, match="exceeds 5242880 bytes"):
        validate_cirr_submission(big, {"version": "rc2", "metric": "recall_subset"}, ids, {})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_and_bf16_close() -> None:
    queries, gallery, gen = _data(300, 500, 8, 64, seed=11, dtype=torch.float32)
    target = torch.randint(0, 500, (300,), generator=gen)
    exclude = (target + 1) % 500
    cpu = target_ranks(queries, gallery, target, exclude, chunk_size=128)
    gpu = target_ranks(
        queries.cuda(), gallery.cuda(), target.cuda(), exclude.cuda(), chunk_size=128
    )
    assert gpu.device.type == "cpu"
    assert (gpu - cpu).abs().max() <= 1  # fp32 GEMM rounding may swap near-ties
    # CPU inputs, CUDA compute, bf16 matmuls: ranks move a little, never wildly
    bf = target_ranks(
        queries, gallery, target, exclude, 128, device="cuda", amp_dtype=torch.bfloat16
    )
    assert (bf - cpu).abs().float().mean() < 5.0
    _, idx_c = topk(queries, gallery, 10, exclude)
    _, idx_g = topk(queries, gallery, 10, exclude, device="cuda")
    assert (idx_c[:, 0] == idx_g[:, 0]).float().mean() > 0.99
