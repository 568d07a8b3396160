"""Training data for the loops: queries and their negative pool, cached ViT tokens, text.

Training never runs the frozen ViT: reference, target and negative images arrive as
cached token matrices (``FeatureSource.get``), which is what makes an epoch cheap (see
``benchmarks/bench_training_step.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch


class FeatureSource(Protocol):
    """Anything that returns cached ViT tokens for image ids (the feature cache)."""

    def get(self, ids: Sequence[str]) -> np.ndarray:  # (n, T, D)
        ...


@dataclass
class TrainData:
    """Training queries and the negative pool, as parallel arrays.

    ``target_idx`` / ``reference_idx`` index ``pool_ids`` (-1 when the reference is not
    in the pool). ``query_groups`` / ``pool_groups`` restrict negatives to the same
    group (FashionIQ category); ``None`` means one pool for all.
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

    def __len__(self) -> int:
        return len(self.reference_ids)

    @classmethod
    def from_tables(
        cls, triplets: pd.DataFrame, images: pd.DataFrame, split: str = "train"
    ) -> TrainData:
        """Training queries of ``split`` and their negative pool (the split's images).

        The pool is per category for FashionIQ (negatives come from the query's own
        category) and one pool otherwise. A triplet whose target is missing from the
        pool is an error (ingestion quarantines those, so reaching here means the
        tables disagree); a reference outside the pool gets index -1.
        """
        q = triplets[(triplets["split"] == split) & triplets["target_id"].notna()]
        q = q.reset_index(drop=True)
        if q.empty:
            raise ValueError(f"no labelled triplets in split {split!r}")
        pool = images[images["split"] == split].drop_duplicates(["image_id", "category"])
        pool = pool.reset_index(drop=True)
        per_category = bool((q["dataset"] == "fashioniq").all())
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
        return cls(
            query_ids=q["query_id"].astype(str).tolist(),
            reference_ids=q["reference_id"].astype(str).tolist(),
            target_ids=q["target_id"].astype(str).tolist(),
            captions_train=[list(f) if len(f) else [c] for f, c in forms],
            caption_eval=q["caption_eval"].astype(str).tolist(),
            edits_color=q["edits_color"].to_numpy(dtype=bool),
            edits_shape=q["edits_shape"].to_numpy(dtype=bool),
            pool_ids=pool["image_id"].astype(str).tolist(),
            target_idx=lookup(q["target_id"], "target", True),
            reference_idx=lookup(q["reference_id"], "reference", False),
            query_groups=groups_q,
            pool_groups=groups_p,
        )


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


def prefetched(
    features: FeatureSource, batches: Sequence[Sequence[Sequence[str]]], pin: bool
) -> Iterator[list[torch.Tensor]]:
    """Host tokens of each batch's id lists, gathered one batch ahead on a worker thread.

    Training reads every step's reference, target and negative tokens from the
    memory-mapped cache; gathering the next step's while the current one computes keeps
    that host work off the critical path. One thread, one batch ahead: the cache is read
    by one thread at a time and at most two batches of tokens are held.
    """
    if not batches:
        return

    def gather(groups: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        return [host_tokens(features, ids, pin) for ids in groups]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-prefetch") as pool:
        pending = pool.submit(gather, batches[0])
        for k in range(len(batches)):
            ready = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(gather, batches[k + 1])
            yield ready
