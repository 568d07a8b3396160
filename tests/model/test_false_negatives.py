"""The mining false-negative counter: drawn negatives that are valid targets of their query."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import make_data, run_fit, tiny_backbone  # noqa: E402

from dqe_cir_pipeline.model.backbone import Backbone  # noqa: E402
from dqe_cir_pipeline.model.data import TrainData  # noqa: E402
from dqe_cir_pipeline.model.mining import (  # noqa: E402
    false_negative_stats,
    sampled_false_negative_rate,
)
from dqe_cir_pipeline.model.mining_result import MiningResult  # noqa: E402
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol  # noqa: E402


def _data(valid_idx: np.ndarray | None) -> TrainData:
    """Three queries over a pool of 10 images; targets 1, 2, 3, references 0."""
    n = 3
    return TrainData(
        query_ids=["a", "b", "c"],
        reference_ids=["i0"] * n,
        target_ids=["i1", "i2", "i3"],
        captions_train=[["x"]] * n,
        caption_eval=["x"] * n,
        edits_color=np.zeros(n, bool),
        edits_shape=np.zeros(n, bool),
        pool_ids=[f"i{k}" for k in range(10)],
        target_idx=np.array([1, 2, 3]),
        reference_idx=np.zeros(n, np.int64),
        valid_idx=valid_idx,
    )


def _result(candidates: list[list[int]]) -> MiningResult:
    cand = np.asarray(candidates, dtype=np.int64)
    n = cand.shape[0]
    nan = np.full(n, np.nan, np.float32)
    return MiningResult(
        candidates=cand,
        deltas=np.where(cand >= 0, -0.1, np.nan).astype(np.float32),
        zone_size=(cand >= 0).sum(axis=1),
        lower=nan,
        upper=nan,
        pool_size=np.full(n, 8),
        fallback=np.zeros(n, np.int8),
        widenings=np.zeros(n, np.int8),
    )


# valid sets: a -> {1, 5, 6}, b -> {2, 7}, c -> {3}
VALID = np.array([[1, 5, 6], [2, 7, -1], [3, -1, -1]])


def test_counter_on_hand_made_negatives_and_valid_sets() -> None:
    data = _data(VALID)
    assert data.multi_target
    rows, images = np.array([0, 0, 0, 1, 1, 2, 2]), np.array([5, 6, 4, 7, 5, 3, -1])
    assert data.is_valid_target(rows, images).tolist() == [1, 1, 0, 1, 0, 1, 0]
    # one draw per query: a draws 5 (valid), b draws 5 (not b's), c draws 9
    assert sampled_false_negative_rate(data, np.array([5, 5, 9])) == pytest.approx(1 / 3)
    assert sampled_false_negative_rate(data, np.array([6, 7, 8])) == pytest.approx(2 / 3)
    # stored zones: a {5, 4, 8, 9} -> 1/4; b {7, 4} -> 1/2; c {-1 ...}: no candidate, left out
    result = _result([[5, 4, 8, 9], [7, 4, -1, -1], [-1, -1, -1, -1]])
    stats = false_negative_stats(data, result)
    assert stats == {"false_negative_rate": pytest.approx((1 / 4 + 1 / 2) / 2)}
    # a draw is uniform over the stored zone: the rate is the expected share of draws
    rng = np.random.default_rng(0)
    from dqe_cir_pipeline.model.negatives import sample_negatives

    draws = np.stack([sample_negatives(result, rng) for _ in range(4000)])[:, :2]
    hits = np.mean([data.is_valid_target(np.array([0, 1]), d).mean() for d in draws])
    assert hits == pytest.approx(stats["false_negative_rate"], abs=0.02)


def test_no_rate_where_only_the_annotated_target_is_known() -> None:
    result = _result([[5, 4], [7, 4], [8, 9]])
    for valid in (None, np.array([[1], [2], [3]])):
        data = _data(valid)
        assert not data.multi_target
        assert false_negative_stats(data, result) == {}
    empty = _data(VALID)
    assert math.isnan(
        false_negative_stats(empty, _result([[-1], [-1], [-1]]))["false_negative_rate"]
    )


def _tables(valid: list[list[str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(valid)
    triplets = pd.DataFrame(
        {
            "query_id": [str(i) for i in range(n)],
            "dataset": ["synthetic"] * n,
            "category": ["dress", "shirt", "dress"][:n],
            "split": ["train"] * n,
            "reference_id": ["r"] * n,
            "target_id": [v[0] for v in valid],
            "caption_eval": ["x"] * n,
            "captions_train": [["x"]] * n,
            "edits_color": [True] * n,
            "edits_shape": [False] * n,
            "valid_targets": valid,
        }
    )
    ids = ["r", "a", "b", "c", "a"]
    images = pd.DataFrame(
        {
            "image_id": ids,
            "category": ["dress", "dress", "dress", "dress", "shirt"],
            "split": ["train"] * len(ids),
        }
    )
    return triplets, images


def test_train_data_carries_valid_targets_as_pool_indices() -> None:
    triplets, images = _tables([["a", "c"], ["a"], ["b", "a", "c"]])
    whole = TrainData.from_tables(triplets, images, protocol=BenchmarkProtocol())
    # one pool: "a" (in two categories) is looked up as the targets are, at its last row
    assert whole.pool_ids == ["r", "a", "b", "c", "a"]
    assert whole.valid_idx.tolist() == [[4, 3, -1], [4, -1, -1], [2, 4, 3]]
    assert whole.valid_idx[:, 0].tolist() == whole.target_idx.tolist()
    per_cat = TrainData.from_tables(triplets, images, protocol=BenchmarkProtocol(per_category=True))
    assert per_cat.valid_idx.tolist() == [[1, 3, -1], [4, -1, -1], [2, 1, 3]]
    assert (
        TrainData.from_tables(
            triplets.drop(columns="valid_targets"), images, protocol=BenchmarkProtocol()
        ).valid_idx
        is None
    )
    bad, _ = _tables([["a", "zz"], ["a"], ["b"]])
    with pytest.raises(KeyError, match="query 0: valid target 'zz' is not in the train images"):
        TrainData.from_tables(bad, images, protocol=BenchmarkProtocol())


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    torch.set_num_threads(1)
    return tiny_backbone(tmp_path_factory.mktemp("tiny_fn"))


@pytest.mark.parametrize("negatives", ["mined", "random"])
def test_tiny_fit_on_ambiguous_data_logs_the_rate(backbone: Backbone, negatives: str) -> None:
    data, feats, val = make_data(n_query=24)
    n = len(data.pool_ids)
    # every query has two more valid targets, the images after its target
    extra = [[(t + 1) % n, (t + 2) % n] for t in data.target_idx]
    extra = [[j for j in e if j != r] for e, r in zip(extra, data.reference_idx, strict=True)]
    data.valid_idx = np.full((len(data), 3), -1, dtype=np.int64)
    for i, (t, e) in enumerate(zip(data.target_idx, extra, strict=True)):
        data.valid_idx[i, : 1 + len(e)] = [t, *e]
    result = run_fit(backbone, None, data=(data, feats, val), epochs=2, negatives=negatives)
    for record in result.history:
        assert 0.0 <= record["train/negatives/false_negative_rate"] <= 1.0
    if negatives == "mined":
        assert len(result.mining_summaries) == 2  # epoch 0 mined by the model, then a refresh
        for summary in result.mining_summaries:
            assert 0.0 <= summary["false_negative_rate"] <= 1.0
    else:
        assert not result.mining_summaries
    plain = run_fit(backbone, None, data=make_data(n_query=24), epochs=1, negatives=negatives)
    assert "train/negatives/false_negative_rate" not in plain.history[0]
