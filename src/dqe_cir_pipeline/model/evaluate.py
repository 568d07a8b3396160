"""Evaluation of a model on one benchmark split: the same code for validation during
training, the evaluation pipeline and the zero-shot baseline.

How a split is ranked and scored is its benchmark's :class:`BenchmarkProtocol`
(``model.protocol``): per-category galleries or one whole gallery, the reference kept or
removed, Recall_subset over ``img_set.members``, a breakdown by edit type. A split where
some query has several valid targets is also scored by the multi-target protocol
(``recall_any@K``, CIRCO's ``map@K``) next to the single-target one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.model.config import RuntimeConfig, config_block
from dqe_cir_pipeline.model.data import FeatureSource
from dqe_cir_pipeline.model.dqe import DQECIR
from dqe_cir_pipeline.model.encode import encode_images, encode_queries
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, protocol_for
from dqe_cir_pipeline.model.retrieval import (
    Rankings,
    average_precision_at_k,
    breakdown_by_group,
    cirr_metrics_from_ranks,
    fashioniq_metrics_from_ranks,
    first_valid_rank,
    map_at_k,
    rank_queries,
    recall_any_at_k,
    recall_at_k,
    subset_ranks,
    subset_topk,
    topk,
)

if TYPE_CHECKING:
    from dqe_cir_pipeline.model.backbone import Backbone

#: mAP@K cut-offs of the multi-target protocol (CIRCO's); recall_any@K uses the split's
#: Recall@K cut-offs.
MAP_KS: tuple[int, ...] = (5, 10, 25, 50)


@config_block
class EvaluationConfig:
    """Evaluation settings (``evaluation``), shared by validation during training.

    Select on one split, report on another [design]: training validates on
    ``selection_split`` every epoch and keeps the best epoch by it; the evaluation and
    zero-shot nodes report on ``split``, which no training choice has seen. The generated
    benchmark's test families are disjoint from train and val. FashionIQ (test targets
    never released) and CIRR (test1 scored by the evaluation server) set both to ``val``.

    Attributes:
        split: the reported split (evaluation, zero-shot and their ``eval.*`` metrics).
        selection_split: the split training validates on every epoch and selects the
            best epoch by (the training history's ``val/*`` columns).
        ks: Recall@K cut-offs (unless the benchmark's protocol has its own).
        chunk_size: queries scored per chunk (bounds memory on large galleries).
        qualitative_queries: rows per qualitative grid (successes and failures).
        qualitative_topk: retrieved images shown per row.
        submission_split: CIRR only: the split whose server files are written.
    """

    split: str = "test"
    selection_split: str = "val"
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50])
    chunk_size: int = 1024
    qualitative_queries: int = 6
    qualitative_topk: int = 5
    submission_split: str = "test1"


@dataclass
class EvalSet:
    """The queries and gallery of one split, as parallel lists.

    ``subset_members`` is empty for FashionIQ. ``target_ids`` holds ``None`` for
    unlabelled queries (CIRR test1). ``valid_targets``: per query every image that
    satisfies it, its target included; empty (the default): each query's target alone.
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
    valid_targets: list[list[str]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return all(t is not None for t in self.target_ids)

    @property
    def multi_target(self) -> bool:
        """Whether some query has more than one valid target (multi-target metrics apply)."""
        return any(len(v) > 1 for v in self.valid_targets)

    def valid_lists(self) -> list[list[str]]:
        """Each query's valid targets (its target alone where none are listed)."""
        if self.valid_targets:
            return [list(v) for v in self.valid_targets]
        return [[] if t is None else [t] for t in self.target_ids]

    @classmethod
    def from_tables(cls, triplets: pd.DataFrame, images: pd.DataFrame, split: str) -> EvalSet:
        """Select one split from the canonical ``triplets`` / ``images`` tables (tables
        without a ``valid_targets`` column: each query's target alone)."""
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
            valid_targets=(
                [[str(v) for v in vs] for vs in q["valid_targets"]] if "valid_targets" in q else []
            ),
        )


@dataclass
class EvalOutput:
    """Metrics (flat dict, percent) and one row per query (ranks, top-k, weights)."""

    metrics: dict[str, float]
    per_query: pd.DataFrame


def _index(
    names: Sequence[str] | Mapping[str, int],
    wanted: Sequence[str | None],
    what: str,
    missing: int | None = None,
) -> torch.Tensor:
    """Gallery positions of ``wanted``; ``names`` as a list, or its name -> position map
    (built once by a caller that looks up many lists: one map per call is O(gallery))."""
    pos = names if isinstance(names, Mapping) else {n: i for i, n in enumerate(names)}
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
    protocol: BenchmarkProtocol | None = None,
) -> EvalOutput:
    """Encode the split with ``model`` and compute its protocol's metrics (``protocol``
    default: the one registered for ``data.dataset``)."""
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
        protocol=protocol,
    )


def evaluate_split(
    model: DQECIR,
    bb: Backbone,
    features: FeatureSource,
    data: EvalSet,
    evaluation: EvaluationConfig,
    runtime: RuntimeConfig,
    protocol: BenchmarkProtocol | None = None,
) -> EvalOutput:
    """``model`` on ``data`` with the evaluation settings: the one call validation during
    training and the evaluation nodes share."""
    return evaluate(
        model,
        features,
        bb.tokenizer,
        data,
        ks=tuple(evaluation.ks),
        chunk_size=evaluation.chunk_size,
        max_len=bb.max_text_len,
        amp_dtype=runtime.amp_dtype,
        protocol=protocol,
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
    protocol: BenchmarkProtocol | None = None,
) -> EvalOutput:
    """Metrics from precomputed embeddings: ``q`` (N,P) and ``gallery`` (M,Q,P).

    Also serves baselines that are not a DQE-CIR model (e.g. the text-blind pixel
    baseline: a (M,1,d) gallery and reference pixels as queries). ``protocol``: the
    benchmark's (default: the one registered for ``data.dataset``); ``ks`` apply unless
    it has its own cut-offs.
    """
    protocol = protocol or protocol_for(data.dataset)
    cutoffs = protocol.cutoffs(ks)
    per_query = pd.DataFrame(
        {"query_id": data.query_ids, "edit_type": data.edit_types, "category": data.categories}
    )
    if weights is not None:
        for j, name in enumerate(("base", "color", "shape")):
            per_query[f"w_{name}"] = weights[:, j].numpy()
    scoring = _Scoring(q, gallery, data, protocol, chunk_size, device, keep_topk)
    ranked = scoring.per_category(cutoffs) if protocol.per_category else scoring.whole(cutoffs)
    metrics = ranked.metrics
    if protocol.headline is not None and data.labelled:
        metrics["avg"] = float(np.mean([metrics[k] for k in protocol.headline]))
    if ranked.subset_ranks is not None:
        per_query["subset_rank"] = ranked.subset_ranks
    if protocol.edit_type_breakdown and data.labelled:
        metrics.update(breakdown_by_group(ranked.ranks, data.edit_types, cutoffs))
    per_query["rank"] = ranked.ranks
    per_query["topk"] = ranked.top
    if weights is not None:
        metrics.update(weight_stats(weights, data.edit_types))
    if data.labelled and data.multi_target:
        metrics.update(_multi_target(scoring, cutoffs, per_query))
    return EvalOutput(metrics=metrics, per_query=per_query)


def _multi_target(
    scoring: _Scoring, ks: Sequence[int], per_query: pd.DataFrame
) -> dict[str, float]:
    """``recall_any@K`` (``ks``) and ``map@K`` (:data:`MAP_KS`); adds the per-query
    ``n_valid``, ``rank_any`` (best valid target's place) and ``ap@K`` columns."""
    ranks, n_valid = scoring.valid_ranks()
    per_query["n_valid"] = n_valid
    per_query["rank_any"] = first_valid_rank(ranks)
    n_ap = np.maximum(n_valid, 1)  # a query left with no candidate valid target scores AP 0
    for k in MAP_KS:
        per_query[f"ap@{k}"] = average_precision_at_k(ranks, n_ap, k)
    return {**recall_any_at_k(ranks, ks), **map_at_k(ranks, n_ap, MAP_KS)}


@dataclass
class _Ranked:
    """Per query: the target's rank (-1: unlabelled), the top-k names, the subset rank."""

    ranks: np.ndarray
    top: list[list[str]]
    metrics: dict[str, float]
    subset_ranks: np.ndarray | None = None


@dataclass
class _Scoring:
    """Ranks and top-k lists of one split's queries under a protocol.

    Each gallery (the whole one, or a category's) is scored once: the same pass gives the
    top-k lists, the annotated target's rank and, on a multi-target split, every valid
    target's rank (kept for :meth:`valid_ranks`).
    """

    q: torch.Tensor
    gallery: torch.Tensor
    data: EvalSet
    protocol: BenchmarkProtocol
    chunk_size: int
    device: torch.device | str | None
    keep_topk: int
    _valid: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False)

    def per_category(self, ks: Sequence[int]) -> _Ranked:
        """Each category's queries ranked in that category's gallery (FashionIQ)."""
        data = self.data
        ranks = np.full(len(data.query_ids), -1, dtype=np.int64)
        top: list[list[str]] = [[] for _ in data.query_ids]
        per_cat: dict[str, torch.Tensor] = {}
        for cat, qi, gi in self._parts():
            names = [data.gallery_ids[i] for i in gi]
            tgt = _index(names, [data.target_ids[i] for i in qi], "target")
            ref = self._references(names, [data.reference_ids[i] for i in qi])
            out = self._rank(qi, gi, names, tgt, ref)
            assert out.target is not None and out.top_idx is not None
            ranks[qi] = out.target.numpy()
            per_cat[cat] = out.target
            for row, i in enumerate(qi):
                top[i] = [names[j] for j in out.top_idx[row].tolist()]
        return _Ranked(ranks, top, fashioniq_metrics_from_ranks(per_cat, ks))

    def whole(self, ks: Sequence[int]) -> _Ranked:
        """The split's whole gallery (CIRR and the generated benchmark)."""
        data = self.data
        names = data.gallery_ids
        everything = np.arange(len(data.query_ids))
        tgt = _index(names, data.target_ids, "target") if data.labelled else None
        ref = self._references(names, data.reference_ids)
        out = self._rank(everything, np.arange(len(names)), names, tgt, ref)
        assert out.top_idx is not None
        top = [[names[j] for j in row] for row in out.top_idx.tolist()]
        if out.target is None:
            return _Ranked(np.full(len(data.query_ids), -1, dtype=np.int64), top, {})
        r = out.target
        assert tgt is not None
        subset_ks = self.protocol.subset_ks
        if not subset_ks:
            return _Ranked(r.numpy(), top, recall_at_k(r, ks))
        pos = {n: i for i, n in enumerate(names)}
        subset = torch.stack(
            [_index(pos, m, "subset member", missing=-1) for m in data.subset_members]
        )
        chunk = max(1, self.chunk_size // 4)
        sr = subset_ranks(self.q, self.gallery, tgt, subset, ref, chunk, self.device)
        return _Ranked(r.numpy(), top, cirr_metrics_from_ranks(r, sr, ks, subset_ks), sr.numpy())

    def valid_ranks(self) -> tuple[np.ndarray, np.ndarray]:
        """(N, V) ranks of every valid target (-1 padding) in the query's gallery, and (N,)
        how many each query has. A valid target equal to a removed reference is not a
        candidate and does not count. Computed by :meth:`per_category` / :meth:`whole`."""
        if self._valid is None:
            raise RuntimeError("valid_ranks() before per_category() or whole()")
        return self._valid

    def _parts(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(category, its query positions, its gallery positions), categories sorted."""
        cats = np.asarray(self.data.categories)
        gcats = np.asarray(self.data.gallery_categories)
        return [
            (c, np.flatnonzero(cats == c), np.flatnonzero(gcats == c))
            for c in sorted(set(self.data.categories))
        ]

    def _rank(
        self,
        qi: np.ndarray,
        gi: np.ndarray,
        names: Sequence[str],
        tgt: torch.Tensor | None,
        ref: torch.Tensor | None,
    ) -> Rankings:
        """One scoring pass of queries ``qi`` over gallery items ``gi`` (``names``), their
        targets ``tgt`` and removed references ``ref`` given as positions in ``names``."""
        data = self.data
        whole = len(gi) == len(data.gallery_ids)
        queries = self.q if len(qi) == len(data.query_ids) else self.q[torch.as_tensor(qi)]
        gallery = self.gallery if whole else self.gallery[torch.as_tensor(gi)]
        valid = None
        if data.labelled and data.multi_target:
            lists = data.valid_lists()
            valid = _valid_index(names, [lists[i] for i in qi], ref)
        out = rank_queries(
            queries,
            gallery,
            k=min(self.keep_topk, len(names) - (ref is not None)),
            target_idx=tgt,
            valid=valid,
            exclude=ref,
            chunk_size=self.chunk_size,
            device=self.device,
        )
        if valid is not None and out.valid is not None:
            self._store_valid(qi, out.valid, (valid >= 0).sum(dim=1))
        return out

    def _store_valid(self, qi: np.ndarray, ranks: torch.Tensor, n_valid: torch.Tensor) -> None:
        if self._valid is None:
            n = len(self.data.query_ids)
            width = max(1, max(len(v) for v in self.data.valid_lists()))
            self._valid = (np.full((n, width), -1, dtype=np.int64), np.zeros(n, dtype=np.int64))
        all_ranks, all_n = self._valid
        all_ranks[qi, : ranks.shape[1]] = ranks.numpy()
        all_n[qi] = n_valid.numpy()

    def _references(self, names: Sequence[str], refs: Sequence[str]) -> torch.Tensor | None:
        """Reference positions to leave out of the ranking (``None``: the protocol keeps
        the reference a candidate)."""
        if not self.protocol.remove_reference:
            return None
        return _index(names, refs, "reference", missing=-1)


def _valid_index(
    names: Sequence[str], lists: Sequence[Sequence[str]], exclude: torch.Tensor | None
) -> torch.Tensor:
    """(N, V) gallery positions of each query's valid targets, -1 padded, without its
    excluded reference; KeyError for a valid target missing from the gallery."""
    pos = {n: i for i, n in enumerate(names)}
    rows = []
    for i, wanted in enumerate(lists):
        if any(w not in pos for w in wanted):
            missing = next(w for w in wanted if w not in pos)
            raise KeyError(f"valid target {missing!r} is not in the gallery")
        drop = -2 if exclude is None else int(exclude[i])
        rows.append([pos[w] for w in wanted if pos[w] != drop])
    out = torch.full((len(rows), max(1, max(map(len, rows), default=1))), -1, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def submission_rankings(
    q: torch.Tensor, gallery: torch.Tensor, data: EvalSet, chunk_size: int = 1024
) -> tuple[list[list[str]], list[list[str]]]:
    """CIRR test1: top-50 (reference removed) and top-3 within the subset, as names."""
    pos = {n: i for i, n in enumerate(data.gallery_ids)}
    ref = _index(pos, data.reference_ids, "reference", missing=-1)
    subset = torch.stack([_index(pos, m, "subset member", missing=-1) for m in data.subset_members])
    _, full = topk(q, gallery, 50, ref, chunk_size)
    sub = subset_topk(q, gallery, subset, 3, ref, max(1, chunk_size // 4))
    names = data.gallery_ids
    return (
        [[names[j] for j in row] for row in full.tolist()],
        [[names[j] for j in row if j >= 0] for row in sub.tolist()],
    )
