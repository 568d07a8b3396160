"""Tests of the text-blind pixel baseline (the floor every result is reported beside)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dqe_cir_pipeline.baselines import pixel_embeddings, text_blind_baseline
from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import IngestResult
from dqe_cir_pipeline.data_sources.synthetic import SyntheticConfig, generate_benchmark
from dqe_cir_pipeline.model.evaluate import EvalSet

SMALL = SyntheticConfig(
    seed=3, train_families=4, val_families=6, test_families=5, variants_per_family=24
)
KS = (1, 5, 10, 50)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, IngestResult]:
    """A small generated benchmark, read as the ingestion pipeline reads it."""
    root = tmp_path_factory.mktemp("syn") / "bench"
    generate_benchmark(root, SMALL)
    cfg = CIRRConfig(
        splits=("train", "val", "test"),
        dataset_name="synthetic",
        version=None,
        unlabelled_splits=(),
        image_check="exists",
    )
    return root, read_cirr(root, root, cfg)


def test_pixel_embeddings(tmp_path: Path) -> None:
    paths = []
    for i, colour in enumerate([(10, 20, 30), (10, 20, 30), (200, 10, 10)]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (40, 40), colour).save(path)
        paths.append(path)
    emb = pixel_embeddings(paths, size=8)
    assert emb.shape == (3, 3 * 8 * 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert emb[0] @ emb[1] == pytest.approx(1.0, abs=1e-5)
    assert emb[0] @ emb[2] < 0.9


def _naive_ranks(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Full and subset ranks by a plain loop, ties counted against the target."""
    records = json.loads((root / "captions" / f"cap.{split}.json").read_text())
    split_map = json.loads((root / "image_splits" / f"split.{split}.json").read_text())
    names = list(split_map)
    emb = pixel_embeddings([root / split_map[n] for n in names])
    full, subset = [], []
    for rec in records:
        sims = dict(zip(names, emb @ emb[names.index(rec["reference"])], strict=True))
        target = sims[rec["target_hard"]]
        others = [n for n in names if n not in (rec["reference"], rec["target_hard"])]
        full.append(sum(sims[n] >= target for n in others))
        members = [m for m in rec["img_set"]["members"] if m in others]
        subset.append(sum(sims[m] >= target for m in members))
    return np.asarray(full), np.asarray(subset)


def test_text_blind_matches_naive_and_is_low(bench: tuple[Path, IngestResult]) -> None:
    root, tables = bench
    for split in ("val", "test"):
        data = EvalSet.from_tables(tables.triplets, tables.images, split)
        out = text_blind_baseline(tables.images, data, KS)
        full, subset = _naive_ranks(root, split)
        # float32 dot products in two libraries may order a near-tie differently
        for k in KS:
            assert out.metrics[f"recall@{k}"] == pytest.approx(100 * np.mean(full < k), abs=1.0)
        for k in (1, 2, 3):
            expected = 100 * np.mean(subset < k)
            assert out.metrics[f"recall_subset@{k}"] == pytest.approx(expected, abs=1.0)
        # Ignoring the text must fail: about K / variants_per_family.
        assert out.metrics["recall@1"] < 10 and out.metrics["recall@10"] < 50
        assert out.metrics["recall_subset@1"] < 40
