"""The typed training batch: gathered on the host from an epoch plan, moved in one call."""

from __future__ import annotations

import os

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import make_data  # noqa: E402

from dqe_cir_pipeline.model.batch import BatchSource, EpochPlan  # noqa: E402


class _Tokenizer:
    """Each text becomes the ids of its words' lengths (padding with 0 to the longest)."""

    def __call__(self, texts: list[str], **_: object) -> dict[str, torch.Tensor]:
        ids = [[len(w) for w in t.split()] for t in texts]
        width = max(map(len, ids))
        pad = [row + [0] * (width - len(row)) for row in ids]
        mask = [[1] * len(row) + [0] * (width - len(row)) for row in ids]
        return {"input_ids": torch.tensor(pad), "attention_mask": torch.tensor(mask)}


def test_a_batch_holds_its_rows_tokens_labels_and_contrasts_in_slot_order() -> None:
    data, feats, _ = make_data(n_pool=12, n_query=6)
    contrasts = np.full((6, 2), -1, dtype=np.int64)
    contrasts[1] = [7, 8]
    contrasts[3, 1] = 9
    plan = EpochPlan(
        negatives=np.arange(6, dtype=np.int64) + 2,
        order=np.arange(6),
        texts=["a bb", "ccc dd", "dddd e", "ff", "g", "hh ii jj"],
        contrasts=contrasts,
    )
    source = BatchSource(data, feats, _Tokenizer(), max_text_len=8)
    rows = np.array([3, 1, 4])
    batch = source.gather(plan, rows)

    assert len(batch) == 3 and batch.reference.dtype == torch.float16
    expected = feats.get([data.reference_ids[i] for i in rows])
    np.testing.assert_array_equal(batch.reference.numpy(), expected)
    np.testing.assert_array_equal(batch.negative_index.numpy(), plan.negatives[rows])
    np.testing.assert_array_equal(batch.target_index.numpy(), data.target_idx[rows])
    assert batch.input_ids.tolist() == [[2, 0], [3, 2], [1, 0]]
    assert batch.attention_mask.tolist() == [[1, 0], [1, 1], [1, 0]]
    # slots (row 0: shape), (row 1: colour, shape): row-major, as the mask selects them
    assert batch.contrast_mask.tolist() == [[False, True], [True, True], [False, False]]
    np.testing.assert_array_equal(
        batch.contrast.numpy(), feats.get([data.pool_ids[j] for j in (9, 7, 8)])
    )

    moved = batch.to(torch.device("cpu"))
    assert moved.reference.dtype == moved.negative.dtype == moved.contrast.dtype == torch.float32
    assert moved.edits_color.dtype == torch.bool and moved.input_ids.dtype == torch.int64


def test_a_batch_without_negatives_or_contrasts_carries_none() -> None:
    data, feats, _ = make_data(n_pool=12, n_query=4)
    no_contrast = np.full((4, 2), -1, dtype=np.int64)
    plan = EpochPlan(None, np.arange(4), ["a"] * 4, contrasts=no_contrast)
    batch = BatchSource(data, feats, _Tokenizer(), max_text_len=8).gather(plan, np.arange(4))
    assert batch.negative is None and batch.negative_index is None
    assert batch.contrast is None and batch.contrast_mask is None
    moved = batch.to(torch.device("cpu"))
    assert moved.negative is None and moved.contrast is None
