"""Evaluation of a model on one benchmark split: the same code for validation during
training, the evaluation pipeline and the zero-shot baseline.

Protocols (as the FashionIQ and CIRR papers evaluate): FashionIQ ranks each category's
own gallery with the reference kept; CIRR and the generated benchmark rank the split's
whole gallery with the reference removed, plus Recall_subset over ``img_set.members``.
The generated benchmark also gets a breakdown by edit type (color / shape / both / other).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.model.data import FeatureSource
from dqe_cir_pipeline.model.dqe import DQECIR
from dqe_cir_pipeline.model.encode import encode_images, encode_queries
from dqe_cir_pipeline.model.retrieval import (
    breakdown_by_group,
    cirr_metrics_from_ranks,
    fashioniq_metrics_from_ranks,
    subset_ranks,
    subset_topk,
    target_ranks,
    topk,
)


@dataclass
class EvalSet:
    """The queries and gallery of one split, as parallel lists.

    ``subset_members`` is empty for FashionIQ. ``target_ids`` holds ``None`` for
    unlabelled queries (CIRR test1).
    """

    dataset: str
    split: str
    query_ids: list[str]
    reference_ids: list[str]
    target_ids: list[str | None]
    texts: list[str]
    edit_types: list[str]
    categories: list[str]
    subset_members: list[list[str]]
    gallery_ids: list[str]
    gallery_categories: list[str]

    @property
    def labelled(self) -> bool:
        return all(t is not None for t in self.target_ids)

    @classmethod
    def from_tables(cls, triplets: pd.DataFrame, images: pd.DataFrame, split: str) -> EvalSet:
        """Select one split from the canonical ``triplets`` / ``images`` tables."""
        q = triplets[triplets["split"] == split].reset_index(drop=True)
        g = images[images["split"] == split].drop_duplicates(["image_id", "category"])
        if q.empty:
            raise ValueError(
                f"no triplets in split {split!r} (splits: {sorted(set(triplets['split']))})"
            )
        if g.empty:
            raise ValueError(f"no images in split {split!r}")
        datasets = sorted(set(q["dataset"]))
        if len(datasets) != 1:
            raise ValueError(f"split {split!r} mixes datasets {datasets}")
        return cls(
            dataset=datasets[0],
            split=split,
            query_ids=q["query_id"].astype(str).tolist(),
            reference_ids=q["reference_id"].astype(str).tolist(),
            target_ids=[None if pd.isna(t) else str(t) for t in q["target_id"]],
            texts=q["caption_eval"].astype(str).tolist(),
            edit_types=q["edit_type"].astype(str).tolist(),
            categories=q["category"].astype(str).tolist(),
            subset_members=[list(m) for m in q["subset_members"]],
            gallery_ids=g["image_id"].astype(str).tolist(),
            gallery_categories=g["category"].astype(str).tolist(),
        )


@dataclass
class EvalOutput:
    """Metrics (flat dict, percent) and one row per query (ranks, top-k, weights)."""

    metrics: dict[str, float]
    per_query: pd.DataFrame


def _index(
    names: Sequence[str], wanted: Sequence[str | None], what: str, missing: int | None = None
) -> torch.Tensor:
    pos = {n: i for i, n in enumerate(names)}
    out = []
    for w in wanted:
        if w is None or w not in pos:
            if missing is None:
                raise KeyError(f"{what} {w!r} is not in the gallery")
            out.append(missing)
        else:
            out.append(pos[w])
    return torch.as_tensor(out, dtype=torch.long)


def weight_stats(weights: torch.Tensor, edit_types: Sequence[str]) -> dict[str, float]:
    """Mean learned attribute weights (base / color / shape) per edit type."""
    w = weights.numpy()
    groups = np.asarray(edit_types)
    out: dict[str, float] = {}
    for et in sorted(set(edit_types)):  # the edit types present (sorted, as the recall breakdown)
        sel = groups == et
        if sel.any():
            for j, name in enumerate(("base", "color", "shape")):
                out[f"weights/{et}/{name}"] = float(w[sel, j].mean())
    return out


def evaluate(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: object,
    data: EvalSet,
    *,
    ks: Sequence[int] = (1, 5, 10, 50),
    chunk_size: int = 1024,
    batch_size: int = 256,
    max_len: int = 32,
    amp_dtype: str | None = "bfloat16",
    keep_topk: int = 10,
) -> EvalOutput:
    """Encode the split with ``model`` and compute its protocol's metrics."""
    device = next(model.parameters()).device
    gallery = encode_images(
        model, features, data.gallery_ids, batch_size=batch_size, amp_dtype=amp_dtype
    )
    queries = encode_queries(
        model,
        features,
        tokenizer,
        data.reference_ids,
        data.texts,
        batch_size=batch_size,
        max_len=max_len,
        amp_dtype=amp_dtype,
    )
    return evaluate_embeddings(
        queries.q,
        queries.weights,
        gallery,
        data,
        ks=ks,
        chunk_size=chunk_size,
        device=device,
        keep_topk=keep_topk,
    )


def evaluate_embeddings(
    q: torch.Tensor,
    weights: torch.Tensor | None,
    gallery: torch.Tensor,
    data: EvalSet,
    *,
    ks: Sequence[int] = (1, 5, 10, 50),
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
    keep_topk: int = 10,
) -> EvalOutput:
    """Metrics from precomputed embeddings: ``q`` (N,P) and ``gallery`` (M,Q,P).

    Also serves baselines that are not a DQE-CIR model (e.g. the text-blind pixel
    baseline: a (M,1,d) gallery and reference pixels as queries).
    """
    n = len(data.query_ids)
    per_query = pd.DataFrame(
        {"query_id": data.query_ids, "edit_type": data.edit_types, "category": data.categories}
    )
    if weights is not None:
        for j, name in enumerate(("base", "color", "shape")):
            per_query[f"w_{name}"] = weights[:, j].numpy()
    metrics: dict[str, float] = {}
    if data.dataset == "fashioniq":
        ranks = np.full(n, -1, dtype=np.int64)
        top = [[] for _ in range(n)]
        per_cat = {}
        cats = np.asarray(data.categories)
        gcats = np.asarray(data.gallery_categories)
        for cat in sorted(set(data.categories)):
            qi = np.flatnonzero(cats == cat)
            gi = np.flatnonzero(gcats == cat)
            names = [data.gallery_ids[i] for i in gi]
            tgt = _index(names, [data.target_ids[i] for i in qi], "target")
            sub_g = gallery[torch.as_tensor(gi)]
            r = target_ranks(q[qi], sub_g, tgt, None, chunk_size, device)
            ranks[qi] = r.numpy()
            per_cat[cat] = r
            _, idx = topk(q[qi], sub_g, min(keep_topk, len(names)), None, chunk_size, device)
            for row, i in enumerate(qi):
                top[i] = [names[j] for j in idx[row].tolist()]
        metrics.update(fashioniq_metrics_from_ranks(per_cat, (10, 50)))
    else:
        ref = _index(data.gallery_ids, data.reference_ids, "reference", missing=-1)
        _, idx = topk(
            q, gallery, min(keep_topk, len(data.gallery_ids) - 1), ref, chunk_size, device
        )
        top = [[data.gallery_ids[j] for j in row] for row in idx.tolist()]
        ranks = np.full(n, -1, dtype=np.int64)
        if data.labelled:
            tgt = _index(data.gallery_ids, data.target_ids, "target")
            subset = torch.stack(
                [
                    _index(data.gallery_ids, m, "subset member", missing=-1)
                    for m in data.subset_members
                ]
            )
            r = target_ranks(q, gallery, tgt, ref, chunk_size, device)
            sr = subset_ranks(q, gallery, tgt, subset, ref, max(1, chunk_size // 4), device)
            ranks = r.numpy()
            metrics.update(cirr_metrics_from_ranks(r, sr, ks, (1, 2, 3)))
            per_query["subset_rank"] = sr.numpy()
            if data.dataset == "synthetic":
                metrics.update(breakdown_by_group(r, data.edit_types, ks))
    per_query["rank"] = ranks
    per_query["topk"] = top
    if weights is not None:
        metrics.update(weight_stats(weights, data.edit_types))
    return EvalOutput(metrics=metrics, per_query=per_query)


def submission_rankings(
    q: torch.Tensor, gallery: torch.Tensor, data: EvalSet, chunk_size: int = 1024
) -> tuple[list[list[str]], list[list[str]]]:
    """CIRR test1: top-50 (reference removed) and top-3 within the subset, as names."""
    ref = _index(data.gallery_ids, data.reference_ids, "reference", missing=-1)
    subset = torch.stack(
        [_index(data.gallery_ids, m, "subset member", missing=-1) for m in data.subset_members]
    )
    _, full = topk(q, gallery, 50, ref, chunk_size)
    sub = subset_topk(q, gallery, subset, 3, ref, max(1, chunk_size // 4))
    names = data.gallery_ids
    return (
        [[names[j] for j in row] for row in full.tolist()],
        [[names[j] for j in row if j >= 0] for row in sub.tolist()],
    )
