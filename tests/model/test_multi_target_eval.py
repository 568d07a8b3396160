"""Evaluation with several valid targets per query: the multi-target metrics equal a
direct computation, and single-target splits are scored exactly as before."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from dqe_cir_pipeline.model.evaluate import MAP_KS, EvalSet, evaluate_embeddings
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol

WHOLE = BenchmarkProtocol(subset_ks=CIRR_SUBSET_KS, edit_type_breakdown=True)
PER_CATEGORY = BenchmarkProtocol(per_category=True, remove_reference=False, ks=(10, 50))
KS = (1, 5, 10, 50)


def _direct(
    q: torch.Tensor,
    gallery: torch.Tensor,
    names: list[str],
    refs: list[str],
    valid: list[list[str]],
    remove_reference: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: the 0-based place of its best valid target and AP@K for every K of
    MAP_KS, from a full sort of the max-over-tokens scores (float64: no ties)."""
    scores = torch.einsum("np,mqp->nmq", q.double(), gallery.double()).amax(-1)
    best = np.empty(len(valid), dtype=np.int64)
    ap = np.empty((len(valid), len(MAP_KS)))
    for i, wanted in enumerate(valid):
        order = [names[j] for j in torch.argsort(scores[i], descending=True).tolist()]
        if remove_reference:
            order = [n for n in order if n != refs[i]]
        rel = np.asarray([n in wanted for n in order], dtype=float)
        best[i] = int(np.flatnonzero(rel)[0])
        for c, k in enumerate(MAP_KS):
            hits = np.cumsum(rel[:k])
            precision = hits / np.arange(1, len(hits) + 1)
            ap[i, c] = float((precision * rel[:k]).sum()) / min(k, len(wanted))
    return best, ap


def _split(
    n_query: int = 30, n_gallery: int = 60, seed: int = 0, max_valid: int = 4
) -> tuple[torch.Tensor, torch.Tensor, EvalSet]:
    """Random unit embeddings and a split whose queries have 1..max_valid valid targets."""
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    q = F.normalize(torch.randn(n_query, 8, generator=g, dtype=torch.float64), dim=-1)
    gallery = F.normalize(torch.randn(n_gallery, 3, 8, generator=g, dtype=torch.float64), dim=-1)
    names = [f"g{i}" for i in range(n_gallery)]
    refs, targets, valid, members = [], [], [], []
    for _ in range(n_query):
        pick = rng.choice(n_gallery, size=1 + max_valid + 4, replace=False)
        ref, chosen = (
            names[pick[0]],
            [names[j] for j in pick[1 : 1 + rng.integers(1, max_valid + 1)]],
        )
        refs.append(ref)
        targets.append(chosen[0])
        valid.append(sorted(chosen))
        members.append([ref, chosen[0], *[names[j] for j in pick[-4:]]])
    data = EvalSet(
        dataset="synthetic",
        split="test",
        query_ids=[str(i) for i in range(n_query)],
        reference_ids=refs,
        target_ids=targets,
        texts=["t"] * n_query,
        edit_types=list(rng.choice(["color", "shape"], n_query)),
        categories=["all"] * n_query,
        subset_members=members,
        gallery_ids=names,
        gallery_categories=["all"] * n_gallery,
        valid_targets=valid,
    )
    return q, gallery, data


def test_whole_gallery_metrics_equal_a_direct_computation() -> None:
    q, gallery, data = _split()
    assert data.multi_target
    out = evaluate_embeddings(q, None, gallery, data, ks=KS, chunk_size=7, protocol=WHOLE)
    best, ap = _direct(q, gallery, data.gallery_ids, data.reference_ids, data.valid_targets, True)
    for k in KS:
        assert out.metrics[f"recall_any@{k}"] == pytest.approx(100 * np.mean(best < k))
    for c, k in enumerate(MAP_KS):
        assert out.metrics[f"map@{k}"] == pytest.approx(100 * ap[:, c].mean())
        np.testing.assert_allclose(out.per_query[f"ap@{k}"], ap[:, c], atol=1e-12)
    pq = out.per_query
    assert pq["rank_any"].tolist() == best.tolist()
    assert pq["n_valid"].tolist() == [len(v) for v in data.valid_targets]
    # any valid target is at least as easy to find as the annotated one
    assert (pq["rank_any"] <= pq["rank"]).all()
    for k in KS:
        assert out.metrics[f"recall_any@{k}"] >= out.metrics[f"recall@{k}"]


def _two_categories() -> tuple[torch.Tensor, torch.Tensor, EvalSet]:
    """24 queries, half "dress" and half "shirt", over a 40-image gallery split 20 / 20;
    each query's reference and valid targets come from its own category."""
    q, gallery, data = _split(n_query=24, n_gallery=40, seed=3)
    gcat = ["dress" if i < 20 else "shirt" for i in range(40)]
    names = data.gallery_ids
    # each query lives in one category: its reference and valid targets drawn from it
    rng = np.random.default_rng(1)
    cats, refs, targets, valid = [], [], [], []
    for i in range(len(data.query_ids)):
        cat = "dress" if i % 2 else "shirt"
        pool = [n for n, c in zip(names, gcat, strict=True) if c == cat]
        pick = rng.choice(len(pool), size=4, replace=False)
        cats.append(cat)
        refs.append(pool[pick[0]])
        chosen = [pool[j] for j in pick[1 : 1 + 1 + i % 3]]
        targets.append(chosen[0])
        valid.append(chosen)
    data = replace(
        data,
        categories=cats,
        reference_ids=refs,
        target_ids=targets,
        valid_targets=valid,
        gallery_categories=gcat,
        subset_members=[[] for _ in cats],
    )
    return q, gallery, data


def test_per_category_galleries_and_kept_reference() -> None:
    q, gallery, data = _two_categories()
    names, cats, gcat = data.gallery_ids, data.categories, data.gallery_categories
    refs, valid = data.reference_ids, data.valid_targets
    out = evaluate_embeddings(q, None, gallery, data, ks=KS, protocol=PER_CATEGORY)
    best = np.empty(len(cats), dtype=np.int64)
    ap = np.empty((len(cats), len(MAP_KS)))
    for cat in ("dress", "shirt"):
        qi = [i for i, c in enumerate(cats) if c == cat]
        gi = [j for j, c in enumerate(gcat) if c == cat]
        b, a = _direct(
            q[qi],
            gallery[gi],
            [names[j] for j in gi],
            [refs[i] for i in qi],
            [valid[i] for i in qi],
            remove_reference=False,
        )
        best[qi], ap[qi] = b, a
    assert out.per_query["rank_any"].tolist() == best.tolist()
    for k in (10, 50):  # the protocol's own cut-offs
        assert out.metrics[f"recall_any@{k}"] == pytest.approx(100 * np.mean(best < k))
    for c, k in enumerate(MAP_KS):
        assert out.metrics[f"map@{k}"] == pytest.approx(100 * ap[:, c].mean())


def test_one_valid_target_per_query_changes_nothing() -> None:
    q, gallery, data = _split(max_valid=1)
    assert not data.multi_target
    listed = evaluate_embeddings(q, None, gallery, data, ks=KS, protocol=WHOLE)
    bare = evaluate_embeddings(
        q, None, gallery, replace(data, valid_targets=[]), ks=KS, protocol=WHOLE
    )
    assert listed.metrics == bare.metrics
    assert not any(k.startswith(("map@", "recall_any@")) for k in listed.metrics)
    pd.testing.assert_frame_equal(listed.per_query, bare.per_query)
    assert not {"n_valid", "rank_any", "ap@10"} & set(listed.per_query.columns)


def test_single_target_protocol_is_unchanged_by_extra_valid_targets() -> None:
    q, gallery, data = _split()
    multi = evaluate_embeddings(q, None, gallery, data, ks=KS, protocol=WHOLE)
    single = evaluate_embeddings(
        q, None, gallery, replace(data, valid_targets=[]), ks=KS, protocol=WHOLE
    )
    extra = {k for k in multi.metrics if k.startswith(("map@", "recall_any@"))}
    assert extra == {f"map@{k}" for k in MAP_KS} | {f"recall_any@{k}" for k in KS}
    assert {k: v for k, v in multi.metrics.items() if k not in extra} == single.metrics
    assert multi.per_query["rank"].tolist() == single.per_query["rank"].tolist()


def test_valid_target_missing_from_the_gallery_is_an_error() -> None:
    q, gallery, data = _split()
    data.valid_targets[0] = [*data.valid_targets[0], "elsewhere"]
    with pytest.raises(KeyError, match="valid target 'elsewhere'"):
        evaluate_embeddings(q, None, gallery, data, ks=KS, protocol=WHOLE)


def test_eval_set_reads_the_valid_targets_column() -> None:
    triplets = pd.DataFrame(
        {
            "query_id": ["1", "2"],
            "dataset": ["synthetic"] * 2,
            "category": ["all"] * 2,
            "split": ["val"] * 2,
            "reference_id": ["a", "b"],
            "target_id": ["b", "a"],
            "caption_eval": ["x", "y"],
            "edit_type": ["color", "shape"],
            "subset_members": [[], []],
            "valid_targets": [["b", "c"], ["a"]],
        }
    )
    images = pd.DataFrame(
        {"image_id": ["a", "b", "c"], "category": ["all"] * 3, "split": ["val"] * 3}
    )
    ev = EvalSet.from_tables(triplets, images, "val")
    assert ev.valid_targets == [["b", "c"], ["a"]] and ev.multi_target
    bare = EvalSet.from_tables(triplets.drop(columns="valid_targets"), images, "val")
    assert bare.valid_targets == [] and bare.valid_lists() == [["b"], ["a"]]


@pytest.mark.parametrize("protocol", [BenchmarkProtocol(), PER_CATEGORY])  # no subsets here
def test_each_gallery_is_scored_once(protocol: BenchmarkProtocol, monkeypatch) -> None:
    """Top-k lists, the target's rank and the valid targets' ranks share one scoring pass
    per gallery: each query chunk is scored against its gallery exactly once (per
    category: each category's queries against that category's images)."""
    from dqe_cir_pipeline.model import retrieval

    q, gallery, data = _two_categories()  # 12 + 12 queries, 20 + 20 images
    calls: list[tuple[int, int]] = []
    scorer_call = retrieval._Scorer.__call__

    def counting(self, q_chunk, out_dtype):  # type: ignore[no-untyped-def]
        calls.append((q_chunk.shape[0], self.m))
        return scorer_call(self, q_chunk, out_dtype)

    monkeypatch.setattr(retrieval._Scorer, "__call__", counting)
    out = evaluate_embeddings(q, None, gallery, data, ks=KS, chunk_size=8, protocol=protocol)
    if protocol.per_category:  # two galleries of 20, 12 queries each: chunks of 8 and 4
        assert sorted(calls) == [(4, 20), (4, 20), (8, 20), (8, 20)]
    else:  # one gallery of 40, 24 queries: three chunks of 8
        assert calls == [(8, 40), (8, 40), (8, 40)]
    pq = out.per_query  # and that pass ranked every query's target and valid targets
    assert (pq["rank"] >= 0).all() and (pq["rank_any"] >= 0).all()
    assert (pq["rank_any"] <= pq["rank"]).all() and pq["topk"].map(len).eq(10).all()
