"""DQE-CIR's own ingredients: attribute-contrast margin negatives and zone statistics."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from helpers.tiny_training import make_data, run_fit, tiny_backbone  # noqa: E402

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr  # noqa: E402
from dqe_cir_pipeline.data_sources.registry import benchmark  # noqa: E402
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark  # noqa: E402
from dqe_cir_pipeline.model.backbone import Backbone  # noqa: E402
from dqe_cir_pipeline.model.data import TrainData  # noqa: E402
from dqe_cir_pipeline.model.dqe import QueryOutput  # noqa: E402
from dqe_cir_pipeline.model.losses import DQELoss, EncodedBatch, LossConfig  # noqa: E402
from dqe_cir_pipeline.model.mining import neighbourhood_stats, sampled_neighbour_share  # noqa: E402
from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives  # noqa: E402


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("syn") / "benchmark"
    cfg = SyntheticConfig(
        seed=5, train_families=6, val_families=1, test_families=0, variants_per_family=12
    )
    generate_benchmark(root, cfg)
    result = read_cirr(
        root,
        root,
        CIRRConfig(splits=("train", "val"), dataset_name="synthetic", version=None),
    )
    return result.triplets, result.images


def _scenes(triplets: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Every image's objects, from the generator's labels (independent of the code under test)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for text, ref, tgt in zip(
        triplets["edit_labels"], triplets["reference_id"], triplets["target_id"], strict=True
    ):
        labels = json.loads(text)
        out[ref] = labels["reference_objects"]
        out[tgt] = labels["target_objects"]
    return out


def _differs_only_in(a: list[dict], b: list[dict], obj: int, attribute: str) -> bool:
    if len(a) != len(b):
        return False
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        keys = set(x) | set(y)
        diff = {key for key in keys if x.get(key) != y.get(key)}
        if diff != ({attribute} if k == obj else set()):
            return False
    return True


def test_attribute_contrasts_differ_from_the_target_in_that_attribute_only(
    tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    triplets, images = tables
    data = TrainData.from_tables(triplets, images, "train", benchmark("synthetic").protocol)
    train = triplets[triplets["split"] == "train"].reset_index(drop=True)
    scenes = _scenes(train)
    checked = {"color": 0, "shape": 0}
    for i, row in train.iterrows():
        labels = json.loads(row["edit_labels"])
        obj = labels["target_object"]
        for attribute, lists in (("color", data.contrast_color), ("shape", data.contrast_shape)):
            for j in lists[i]:
                image = data.pool_ids[j]
                assert image != row["target_id"]
                assert _differs_only_in(scenes[image], scenes[row["target_id"]], obj, attribute)
                checked[attribute] += 1
        if row["edit_type"] == "color":  # the reference differs in the new colour only
            assert data.reference_idx[i] in data.contrast_color[i]
        if row["edit_type"] == "shape":
            assert data.reference_idx[i] in data.contrast_shape[i]
    assert checked["color"] > 20 and checked["shape"] > 20
    # colour+shape edits: the generator's partial edits give a non-reference contrast
    both = np.flatnonzero((train["edit_type"] == "both").to_numpy())
    assert len(both)
    assert any(set(data.contrast_color[i].tolist()) - {int(data.reference_idx[i])} for i in both)


def test_draw_contrasts_only_for_the_attributes_an_edit_touches(
    tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    triplets, images = tables
    data = TrainData.from_tables(triplets, images, "train", benchmark("synthetic").protocol)
    drawn = data.draw_contrasts(np.random.default_rng(0))
    assert drawn.shape == (len(data), 2)
    assert (drawn[~data.edits_color, 0] == -1).all()
    assert (drawn[~data.edits_shape, 1] == -1).all()
    for i in np.flatnonzero(drawn[:, 0] >= 0):
        assert drawn[i, 0] in data.contrast_color[i]
    colour = data.edits_color & np.array([len(c) > 0 for c in data.contrast_color])
    assert (drawn[colour, 0] >= 0).all()


def test_real_benchmarks_record_no_scene_and_get_no_contrasts(
    tables: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    triplets, images = tables
    real = triplets.assign(dataset="cirr", edit_labels="{}")
    data = TrainData.from_tables(
        real, images.assign(dataset="cirr"), "train", benchmark("cirr").protocol
    )
    assert data.contrast_color == [] and data.contrast_shape == []
    assert (data.draw_contrasts(np.random.default_rng(0)) == -1).all()


def test_the_margins_use_the_contrast_image_exactly_where_it_is_given() -> None:
    torch.manual_seed(0)
    b, q, p = 4, 3, 8

    def unit(*shape: int) -> torch.Tensor:
        return torch.nn.functional.normalize(torch.randn(*shape), dim=-1)

    class Scorer(torch.nn.Module):
        cfg = type("Cfg", (), {"use_attribute_weights": False})()

        def temperature(self) -> torch.Tensor:
            return torch.tensor(0.07)

        pair_score = staticmethod(lambda x, t: torch.einsum("bp,bqp->bq", x, t).amax(-1))
        score = staticmethod(lambda x, t: torch.einsum("bp,nqp->bnq", x, t).amax(-1))

    out = QueryOutput(
        q=unit(b, p), q_base=unit(b, p), q_color=unit(b, p), q_shape=unit(b, p), weights=None
    )
    tgt, neg, con = unit(b, q, p), unit(b, q, p), unit(b, 2, q, p)
    edits = torch.ones(b, dtype=torch.bool)
    loss = DQELoss(LossConfig(objective="pairwise_kl", margin=2.0))  # every hinge active
    plain = loss(Scorer(), EncodedBatch(out, tgt, edits, edits, neg))
    none = loss(
        Scorer(),
        EncodedBatch(
            out,
            tgt,
            edits,
            edits,
            neg,
            contrasts=con,
            contrast_mask=torch.zeros(b, 2, dtype=torch.bool),
        ),
    )
    full = loss(
        Scorer(),
        EncodedBatch(
            out,
            tgt,
            edits,
            edits,
            neg,
            contrasts=con,
            contrast_mask=torch.ones(b, 2, dtype=torch.bool),
        ),
    )
    as_negative = loss(Scorer(), EncodedBatch(out, tgt, edits, edits, con[:, 0]))
    assert torch.equal(none.color_margin, plain.color_margin)
    assert torch.allclose(full.color_margin, as_negative.color_margin)
    assert torch.allclose(full.main, plain.main)  # the main term keeps the negative
    shape_only = loss(Scorer(), EncodedBatch(out, tgt, edits, edits, con[:, 1]))
    assert torch.allclose(full.shape_margin, shape_only.shape_margin)


def test_neighbourhood_statistics_match_a_brute_force_count() -> None:
    rng = np.random.default_rng(1)
    m, q_tokens, p = 30, 2, 6
    # 3 references with 4 targets each: 12 queries; neighbours = the other 3 targets
    refs = np.repeat([0, 10, 20], 4)
    tgts = np.array([1, 2, 3, 4, 11, 12, 13, 14, 21, 22, 23, 24])
    data, _, _ = make_data(n_pool=m, n_query=len(refs))
    data.reference_idx, data.target_idx = refs.astype(np.int64), tgts.astype(np.int64)
    data.reference_ids = [data.pool_ids[i] for i in refs]
    data.target_ids = [data.pool_ids[i] for i in tgts]
    data.neighbour_keys = np.unique(refs * m + tgts)
    queries = torch.nn.functional.normalize(torch.tensor(rng.standard_normal((12, p))), dim=-1)
    pool = torch.nn.functional.normalize(
        torch.tensor(rng.standard_normal((m, q_tokens, p))), dim=-1
    )
    cfg = MiningConfig(zone_quantile=0.3, epsilon=0.05)
    result = mine_negatives(queries.float(), pool.float(), tgts, refs, cfg)
    stats = neighbourhood_stats(queries.float(), pool.float(), data, result, cfg.epsilon)
    s = torch.einsum("np,mqp->nmq", queries, pool).amax(-1).numpy()
    above = in_zone = total = stored_nb = stored = 0
    for i in range(12):
        group = tgts[refs == refs[i]]
        for j in group[group != tgts[i]]:
            d = s[i, j] - s[i, tgts[i]]
            total += 1
            above += d > -cfg.epsilon
            in_zone += result.lower[i] <= d <= result.upper[i]
        kept = result.candidates[i][result.candidates[i] >= 0]
        stored += len(kept)
        stored_nb += np.isin(kept, group).sum()
    assert total == 36
    assert stats["neighbourhood/above_gap"] == pytest.approx(above / total, abs=1e-6)
    assert stats["neighbourhood/in_zone"] == pytest.approx(in_zone / total, abs=1e-6)
    assert stats["neighbourhood/stored_share"] == pytest.approx(stored_nb / stored, abs=1e-6)
    assert stats["neighbourhood/random_share"] == pytest.approx(3 / 28, abs=1e-6)
    picks = np.array([tgts[i + 1 if i % 4 != 3 else i - 1] for i in range(12)])  # all neighbours
    assert sampled_neighbour_share(data, picks) == 1.0
    assert sampled_neighbour_share(data, np.full(12, 29)) == 0.0


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    torch.set_num_threads(1)
    return tiny_backbone(tmp_path_factory.mktemp("tiny_contrast"))


def test_training_uses_the_contrasts_and_logs_coverage_and_zone_statistics(
    backbone: Backbone,
) -> None:
    data, feats, val = make_data(n_query=24)
    n = len(data.pool_ids)
    # every query gets one contrast image per attribute (an image that is neither its
    # target nor its reference), and a neighbourhood of the other targets of its reference
    data.contrast_color = [np.array([(t + 3) % n]) for t in data.target_idx]
    data.contrast_shape = [np.array([(t + 4) % n]) for t in data.target_idx]
    data.neighbour_keys = np.unique(data.reference_idx * n + data.target_idx)
    given = (data, feats, val)
    attribute = run_fit(backbone, None, data=given, epochs=2, margin_negatives="attribute")
    mined = run_fit(backbone, None, data=given, epochs=2, margin_negatives="mined")
    first = attribute.history[0]
    assert first["train/margins/color_contrast_rate"] == 1.0
    assert first["train/margins/shape_contrast_rate"] == 1.0
    assert "train/margins/color_contrast_rate" not in mined.history[0]
    # same init, same draws before the contrasts: the margin terms differ, the main term
    # of the first epoch's first step is the same objective on the same negatives
    assert first["train/color_margin"] != mined.history[0]["train/color_margin"]
    assert 0.0 <= first["train/negatives/neighbourhood_share"] <= 1.0
    refreshes = attribute.mining_summaries[1:]  # epoch 0 is mined too, later ones refresh
    assert refreshes and "neighbourhood/above_gap" in refreshes[-1]
