"""The evaluation protocol as a parameter: what each rule changes in the metrics."""

from __future__ import annotations

import pytest
import torch

from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate_embeddings
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, protocol_for


def _split(categories: list[str]) -> tuple[torch.Tensor, torch.Tensor, EvalSet]:
    """Four gallery images whose embeddings are one-hot; query i equals image i + 1 (its
    target), and its reference (image i) is the runner-up."""
    gallery = torch.eye(4).unsqueeze(1)  # (M, 1, P)
    q = torch.eye(4)[[1, 2, 3]] + 0.5 * torch.eye(4)[[0, 1, 2]]
    q = torch.nn.functional.normalize(q, dim=-1)
    data = EvalSet(
        dataset="unregistered",
        split="val",
        query_ids=["0", "1", "2"],
        reference_ids=["i0", "i1", "i2"],
        target_ids=["i1", "i2", "i3"],
        texts=["t"] * 3,
        edit_types=["color", "shape", "color"],
        categories=categories[:3],
        subset_members=[[], [], []],
        gallery_ids=["i0", "i1", "i2", "i3"],
        gallery_categories=categories,
    )
    return q, gallery, data


def test_headline_and_breakdown_follow_the_protocol() -> None:
    q, gallery, data = _split(["all"] * 4)
    protocol = BenchmarkProtocol(edit_type_breakdown=True, headline=("recall@1", "recall@2"))
    out = evaluate_embeddings(q, None, gallery, data, ks=(1, 2), protocol=protocol)
    assert out.metrics["recall@1"] == 100.0
    assert out.metrics["avg"] == 100.0
    assert not any(k.startswith("recall_subset") for k in out.metrics)
    assert out.metrics["color/count"] == 2.0 and out.metrics["shape/recall@1"] == 100.0
    assert "subset_rank" not in out.per_query


def test_the_reference_is_a_candidate_only_where_the_protocol_keeps_it() -> None:
    q, gallery, data = _split(["a", "a", "a", "a"])
    kept = BenchmarkProtocol(per_category=True, remove_reference=False, ks=(1,))
    removed = BenchmarkProtocol(per_category=True, ks=(1,))
    # the target ranks first either way; the reference is second only when kept
    out = evaluate_embeddings(q, None, gallery, data, protocol=kept)
    assert out.metrics["a/recall@1"] == 100.0 and out.metrics["avg"] == 100.0
    assert [top[1] for top in out.per_query["topk"]] == ["i0", "i1", "i2"]
    out = evaluate_embeddings(q, None, gallery, data, protocol=removed)
    tops = out.per_query["topk"]
    assert all(r not in top for r, top in zip(data.reference_ids, tops, strict=True))


def test_subset_recall_needs_one_gallery_and_unknown_datasets_are_named() -> None:
    with pytest.raises(ValueError, match="whole gallery"):
        BenchmarkProtocol(per_category=True, subset_ks=(1,))
    with pytest.raises(KeyError, match="no protocol is registered for dataset 'unregistered'"):
        protocol_for("unregistered")
    assert BenchmarkProtocol(ks=(10, 50)).cutoffs([1, 5]) == (10, 50)
    assert BenchmarkProtocol().cutoffs([1, 5]) == (1, 5)
