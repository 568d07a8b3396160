"""Training data for the loops: queries and their negative pool, cached ViT tokens, text.

Training never runs the frozen ViT: reference, target and negative images arrive as
cached token matrices (``FeatureSource.get``), which is what makes an epoch cheap (see
``benchmarks/bench_training_step.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, protocol_for


class FeatureSource(Protocol):
    """Anything that returns cached ViT tokens for image ids (the feature cache)."""

    def get(self, ids: Sequence[str]) -> np.ndarray:  # (n, T, D)
        ...


@dataclass
class TrainData:
    """Training queries and the negative pool, as parallel arrays.

    ``target_idx`` / ``reference_idx`` index ``pool_ids`` (-1 when the reference is not
    in the pool). ``query_groups`` / ``pool_groups`` restrict negatives to the same
    group (FashionIQ category); ``None`` means one pool for all. ``valid_idx``: (N, V)
    pool indices of every valid target of each query (its target included), -1 padded;
    ``None``: the target alone.
    """

    query_ids: list[str]
    reference_ids: list[str]
    target_ids: list[str]
    captions_train: list[list[str]]
    caption_eval: list[str]
    edits_color: np.ndarray  # (N,) bool
    edits_shape: np.ndarray  # (N,) bool
    pool_ids: list[str]
    target_idx: np.ndarray  # (N,) int64
    reference_idx: np.ndarray  # (N,) int64
    query_groups: np.ndarray | None = None  # (N,) int64
    pool_groups: np.ndarray | None = None  # (M,) int64
    #: sorted keys ``reference_idx * M + image_idx``: the images that are targets of some
    #: query with that reference (the reference's neighbourhood; a scene family on the
    #: generated benchmark). Empty: unknown.
    neighbour_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    #: per query, pool indices of images that differ from its target only in the edited
    #: object's colour / shape (exact generator labels; empty lists: none known).
    contrast_color: list[np.ndarray] = field(default_factory=list)
    contrast_shape: list[np.ndarray] = field(default_factory=list)
    valid_idx: np.ndarray | None = None  # (N, V) int64, -1 padded

    def __len__(self) -> int:
        return len(self.reference_ids)

    @property
    def multi_target(self) -> bool:
        """Whether some query lists a valid target besides its annotated one."""
        return self.valid_idx is not None and bool(((self.valid_idx >= 0).sum(axis=1) > 1).any())

    def is_valid_target(self, rows: np.ndarray, images: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: is pool image ``images[k]`` a valid target of query ``rows[k]``?"""
        valid = self.target_idx[:, None] if self.valid_idx is None else self.valid_idx
        images = np.asarray(images, dtype=np.int64)
        return (valid[np.asarray(rows, dtype=np.int64)] == images[:, None]).any(axis=1) & (
            images >= 0
        )

    def in_neighbourhood(self, rows: np.ndarray, images: np.ndarray) -> np.ndarray:
        """``(K,)`` bool: is ``images[k]`` in the neighbourhood of query ``rows[k]``'s
        reference (a target of another query with the same reference)?"""
        ref = self.reference_idx[rows]
        keys = np.where(ref >= 0, ref * len(self.pool_ids) + images, -1)
        if not len(self.neighbour_keys):
            return np.zeros(len(keys), dtype=bool)
        pos = np.minimum(np.searchsorted(self.neighbour_keys, keys), len(self.neighbour_keys) - 1)
        return (self.neighbour_keys[pos] == keys) & (keys >= 0)

    def draw_contrasts(self, rng: np.random.Generator) -> np.ndarray:
        """``(N, 2)`` one colour- and one shape-contrast image per query (pool indices,
        ``-1`` where the edit does not touch the attribute or no such image exists)."""
        out = np.full((len(self), 2), -1, dtype=np.int64)
        for col, (lists, touches) in enumerate(
            ((self.contrast_color, self.edits_color), (self.contrast_shape, self.edits_shape))
        ):
            if not lists:
                continue
            for i, cands in enumerate(lists):
                if touches[i] and len(cands):
                    out[i, col] = int(cands[rng.integers(len(cands))])
        return out

    @classmethod
    def from_tables(
        cls,
        triplets: pd.DataFrame,
        images: pd.DataFrame,
        split: str = "train",
        protocol: BenchmarkProtocol | None = None,
    ) -> TrainData:
        """Training queries of ``split`` and their negative pool (the split's images).

        The pool is per category when the benchmark's ``protocol`` says so (FashionIQ:
        negatives come from the query's own category) and one pool otherwise; ``None``:
        the protocol registered for the tables' dataset. A triplet whose target (or
        another valid target) is missing from the pool is an error (ingestion quarantines
        those, so reaching here means the tables disagree); a reference outside the pool
        gets index -1. Tables without ``valid_targets``: ``valid_idx`` is ``None``.
        """
        q = triplets[(triplets["split"] == split) & triplets["target_id"].notna()]
        q = q.reset_index(drop=True)
        if q.empty:
            raise ValueError(f"no labelled triplets in split {split!r}")
        pool = images[images["split"] == split].drop_duplicates(["image_id", "category"])
        pool = pool.reset_index(drop=True)
        protocol = protocol or protocol_for(_one_dataset(q, split))
        per_category = protocol.per_category
        pool_cats = pool["category"] if per_category else [""] * len(pool)
        positions = {key: i for i, key in enumerate(zip(pool["image_id"], pool_cats, strict=True))}
        query_cats = q["category"] if per_category else pd.Series([""] * len(q))

        def lookup(ids: pd.Series, role: str, required: bool) -> np.ndarray:
            out = np.empty(len(ids), dtype=np.int64)
            for i, key in enumerate(zip(ids, query_cats, strict=True)):
                if key not in positions and required:
                    raise KeyError(
                        f"query {q['query_id'][i]}: {role} {key[0]!r} is not in the {split} images"
                    )
                out[i] = positions.get(key, -1)
            return out

        groups_q = groups_p = None
        if per_category:
            codes = {c: i for i, c in enumerate(sorted(set(pool["category"])))}
            groups_q = q["category"].map(codes).to_numpy(dtype=np.int64)
            groups_p = pool["category"].map(codes).to_numpy(dtype=np.int64)
        forms = zip(q["captions_train"], q["caption_eval"], strict=True)
        target_idx = lookup(q["target_id"], "target", True)
        reference_idx = lookup(q["reference_id"], "reference", False)
        contrast_color, contrast_shape = (
            attribute_contrasts(q, pool, positions, query_cats)
            if protocol.scene_labels
            else ([], [])
        )
        return cls(
            query_ids=q["query_id"].astype(str).tolist(),
            reference_ids=q["reference_id"].astype(str).tolist(),
            target_ids=q["target_id"].astype(str).tolist(),
            captions_train=[list(f) if len(f) else [c] for f, c in forms],
            caption_eval=q["caption_eval"].astype(str).tolist(),
            edits_color=q["edits_color"].to_numpy(dtype=bool),
            edits_shape=q["edits_shape"].to_numpy(dtype=bool),
            pool_ids=pool["image_id"].astype(str).tolist(),
            target_idx=target_idx,
            reference_idx=reference_idx,
            query_groups=groups_q,
            pool_groups=groups_p,
            neighbour_keys=_neighbour_keys(reference_idx, target_idx, len(pool)),
            contrast_color=contrast_color,
            contrast_shape=contrast_shape,
            valid_idx=_valid_positions(q, query_cats, positions, split),
        )


def _valid_positions(
    q: pd.DataFrame, query_cats: pd.Series, positions: dict[tuple[str, str], int], split: str
) -> np.ndarray | None:
    """(N, V) pool indices of each query's ``valid_targets``, -1 padded (``None`` without
    the column); KeyError naming the first valid target missing from the pool."""
    if "valid_targets" not in q:
        return None
    flat = [v for vs in q["valid_targets"] for v in vs]
    owners = np.repeat(np.arange(len(q)), [len(vs) for vs in q["valid_targets"]])
    keys = zip(flat, np.asarray(query_cats, dtype=object)[owners], strict=True)
    found = [positions.get(key, -1) for key in keys]
    if -1 in found:
        i = found.index(-1)
        raise KeyError(
            f"query {q['query_id'][owners[i]]}: valid target {flat[i]!r} is not in the "
            f"{split} images"
        )
    return _padded(np.asarray(found, dtype=np.int64), owners, len(q))


def _padded(values: np.ndarray, owners: np.ndarray, n: int) -> np.ndarray:
    """(n, V) ``values`` grouped by their (sorted) ``owners`` row, -1 padded."""
    counts = np.bincount(owners, minlength=n)
    out = np.full((n, max(1, int(counts.max(initial=0)))), -1, dtype=np.int64)
    col = np.arange(len(owners)) - np.repeat(np.cumsum(counts) - counts, counts)
    out[owners, col] = values
    return out


def _one_dataset(q: pd.DataFrame, split: str) -> str:
    """The dataset of ``split``'s queries (one benchmark's tables, not a mixture)."""
    datasets = sorted(set(q["dataset"]))
    if len(datasets) != 1:
        raise ValueError(f"split {split!r} mixes datasets {datasets}")
    return datasets[0]


def _neighbour_keys(reference_idx: np.ndarray, target_idx: np.ndarray, m: int) -> np.ndarray:
    """Sorted unique ``reference * M + target`` keys of the queries with a pool reference."""
    has = reference_idx >= 0
    return np.unique(reference_idx[has] * m + target_idx[has])


_Scene = tuple[tuple[tuple[str, str], ...], ...]


def _scene(objects: list[dict[str, Any]]) -> _Scene:
    return tuple(tuple(sorted((str(k), str(v)) for k, v in obj.items())) for obj in objects)


def _blank(scene: _Scene, obj: int, attribute: str) -> _Scene:
    """``scene`` with ``attribute`` of object ``obj`` replaced by a wildcard."""
    edited = tuple((k, "*" if k == attribute else v) for k, v in scene[obj])
    return scene[:obj] + (edited,) + scene[obj + 1 :]


def attribute_contrasts(
    q: pd.DataFrame,
    pool: pd.DataFrame,
    positions: dict[tuple[str, str], int],
    query_cats: pd.Series,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per query, the pool images equal to its target except the edited object's colour
    (first list) or shape (second list). [ours]

    Needs every image's scene, which only a benchmark whose protocol has ``scene_labels``
    records (the generated one: ``edit_labels`` holds the reference's and the target's
    objects); the others get empty lists from ``TrainData.from_tables`` (the attribute
    margins then use the mined negative). The reference itself qualifies when it differs
    from the target in that attribute only (a colour-only edit).
    """
    empty: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    if "edit_labels" not in q:
        return empty
    labels = [json.loads(text) if text else {} for text in q["edit_labels"]]
    scenes: dict[int, _Scene] = {}
    for lab, ref, tgt, cat in zip(
        labels, q["reference_id"], q["target_id"], query_cats, strict=True
    ):
        for image, key in ((ref, "reference_objects"), (tgt, "target_objects")):
            pos = positions.get((image, cat))
            if pos is not None and key in lab:
                scenes[pos] = _scene(lab[key])
    if not scenes:
        return empty
    index: dict[tuple[str, int, _Scene], list[int]] = {}
    for pos, scene in scenes.items():
        for obj in range(len(scene)):
            for attribute in ("color", "shape"):
                index.setdefault((attribute, obj, _blank(scene, obj, attribute)), []).append(pos)
    out: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    none = np.zeros(0, np.int64)
    for lab, tgt, cat in zip(labels, q["target_id"], query_cats, strict=True):
        t = positions.get((tgt, cat))
        obj = lab.get("target_object", lab.get("object"))
        scene = scenes.get(t) if t is not None else None
        for lists, attribute in zip(out, ("color", "shape"), strict=True):
            if scene is None or not isinstance(obj, int) or not 0 <= obj < len(scene):
                lists.append(none)
                continue
            same = index.get((attribute, obj, _blank(scene, obj, attribute)), [])
            lists.append(np.asarray(sorted(p for p in same if p != t), dtype=np.int64))
    return out


def train_captions(triplets: pd.DataFrame) -> list[str]:
    """Every training caption form (the tiny tokenizer's training corpus)."""
    train = triplets[triplets["split"] == "train"]
    forms = [text for texts in train["captions_train"] for text in texts]
    return forms + train["caption_eval"].tolist()


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise a batch: returns ``input_ids`` and ``attention_mask``, both (B, L)."""
    enc = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt"
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def host_tokens(features: FeatureSource, ids: Sequence[str], pin: bool = False) -> torch.Tensor:
    """Cached ViT tokens for ``ids`` on the host, in their stored dtype (float16): (B, T, D).

    ``pin`` page-locks them so that the copy to a GPU can run asynchronously.
    """
    tokens = torch.from_numpy(np.ascontiguousarray(features.get(list(ids))))
    return tokens.pin_memory() if pin else tokens


def to_device(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tokens -> float32 on ``device``; the cast runs after the copy (half the bytes move)."""
    return tokens.to(device, non_blocking=tokens.is_pinned()).float()


def load_tokens(features: FeatureSource, ids: Sequence[str], device: torch.device) -> torch.Tensor:
    """Cached ViT tokens for ``ids`` as float32 on ``device``: (B, T, D)."""
    return to_device(host_tokens(features, ids), device)


_Item = TypeVar("_Item")
_Gathered = TypeVar("_Gathered")


def prefetched(
    features: FeatureSource, batches: Sequence[Sequence[Sequence[str]]], pin: bool
) -> Iterator[list[torch.Tensor]]:
    """Host tokens of each batch's id lists, gathered one batch ahead (:func:`gathered_ahead`)."""

    def gather(groups: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        return [host_tokens(features, ids, pin) for ids in groups]

    return gathered_ahead(batches, gather)


def gathered_ahead(
    items: Sequence[_Item], gather: Callable[[_Item], _Gathered]
) -> Iterator[_Gathered]:
    """``gather(item)`` for each item in order, the next one computed while this one is used.

    Training reads every step's tokens from the memory-mapped cache; gathering the next
    step's while the current one computes keeps that host work off the critical path.
    One thread, one item ahead: the cache is read by one thread at a time and at most two
    gathered items are held.
    """
    if not items:
        return

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-prefetch") as pool:
        pending = pool.submit(gather, items[0])
        for k in range(len(items)):
            ready = pending.result()
            if k + 1 < len(items):
                pending = pool.submit(gather, items[k + 1])
            yield ready
