"""Each modular pipeline run with SequentialRunner over an in-memory catalog."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from kedro.io import MemoryDataset
from kedro.runner import SequentialRunner

from dqe_cir_pipeline.data_sources.schema import IMAGE_SCHEMA, TRIPLET_SCHEMA
from dqe_cir_pipeline.pipeline_registry import register_pipelines
from dqe_cir_pipeline.pipelines.evaluation.nodes import evaluate_checkpoint


def test_registry_names_every_stage() -> None:
    pipes = register_pipelines()
    assert {
        "__default__",
        "train",
        "data_ingestion",
        "embedding_extraction",
        "negative_mining",
        "training",
        "evaluation",
        "zero_shot",
    } <= set(pipes)
    names = {n.name for n in pipes["train"].nodes}
    assert {
        "data_ingestion.prepare_benchmark_source",
        "data_ingestion.ingest_benchmark",
        "data_ingestion.validate_ingestion",
        "data_ingestion.publish_tables",
        "embedding_extraction.prepare_backbone",
        "embedding_extraction.extract_vit_features",
        "negative_mining.mine_initial_negatives",
        "training.train_dqe_cir",
        "evaluation.evaluate_checkpoint",
    } <= names
    # one namespace per stage, so kedro viz collapses each stage into one box
    assert {n.namespace for n in pipes["train"].nodes} == {
        "data_ingestion",
        "embedding_extraction",
        "negative_mining",
        "training",
        "evaluation",
        "serving",
    }


def test_ingestion_outputs_canonical_tables(prepared: dict[str, Any]) -> None:
    cat = prepared["catalog"]
    images, triplets = cat.load("images"), cat.load("triplets")
    pa.Table.from_pandas(images, schema=IMAGE_SCHEMA, preserve_index=False)
    pa.Table.from_pandas(triplets, schema=TRIPLET_SCHEMA, preserve_index=False)
    syn = prepared["params"]["data"]["synthetic"]
    assert (triplets["split"] == "train").sum() == syn["train_families"] * syn[
        "train_variants_per_family"
    ]
    assert (triplets["split"] == "val").sum() == syn["val_families"] * syn["variants_per_family"]
    # the held-out test split: val's variant count, its own families
    assert (triplets["split"] == "test").sum() == syn["test_families"] * syn["variants_per_family"]
    assert set(triplets["split"]) == set(images["split"]) == {"train", "val", "test"}
    assert triplets["target_id"].notna().all()  # the generated test split is labelled
    refs = triplets.groupby("split")["reference_id"].agg(set)
    assert not refs["test"] & (refs["train"] | refs["val"])
    assert cat.load("quarantine").empty
    report = cat.load("ingestion_report")
    assert report["counts"]["triplets"] == len(triplets)
    assert len(report["fingerprint"]) == 16
    metrics = cat.load("ingestion_metrics")
    assert metrics["ingestion/images"]["value"] == len(images)


def test_extraction_fills_cache_for_every_image(prepared: dict[str, Any]) -> None:
    cat = prepared["catalog"]
    cache = cat.load("vit_features")
    images = cat.load("images")
    assert set(images["image_id"]) == set(cache.image_ids)
    info = cat.load("backbone_info")
    feats = cache.get(images["image_id"].iloc[:3].tolist())
    grid = info["image_size"] // prepared["params"]["backbone"]["tiny"]["patch_size"]
    assert feats.shape == (3, grid * grid + 1, info["vision_hidden"])
    assert np.isfinite(feats).all() and feats.std() > 0.1  # not the 1e-10 init trap


def test_rerun_extraction_reuses_the_cache(prepared: dict[str, Any]) -> None:
    cat = prepared["catalog"]
    SequentialRunner().run(register_pipelines()["embedding_extraction"], cat)
    stats = cat.load("extraction_report")["last_save"]
    assert stats["computed"] == 0
    assert stats["reused"] == cat.load("images")["image_id"].nunique()


def test_mining_gives_valid_negatives(prepared: dict[str, Any]) -> None:
    cat = prepared["catalog"]
    neg = cat.load("initial_negatives")
    train = cat.load("triplets").query("split == 'train'")
    assert neg["query_id"].tolist() == train["query_id"].tolist()
    for row in neg.itertuples():
        assert row.target_id not in row.candidate_ids and row.reference_id not in row.candidate_ids
        assert len(row.candidate_ids) >= 1
    assert "mining/initial.seconds" in cat.load("mining_metrics")


@pytest.mark.slow
def test_training_and_evaluation_pipelines(prepared: dict[str, Any]) -> None:
    cat = prepared["catalog"]
    pipes = register_pipelines()
    SequentialRunner().run(pipes["training"] + pipes["evaluation"], cat)
    ckpt = cat.load("model_checkpoint")
    assert {"model", "config", "backbone", "metrics", "epoch"} <= set(ckpt)
    history = cat.load("training_history")
    assert len(history) == prepared["params"]["training"]["loop"]["epochs"]
    assert history["train/loss"].notna().all()
    table = cat.load("evaluation_table")
    assert set(table["model"]) == {"dqe_cir", "zero_shot", "untrained", "text_blind"}
    summary = cat.load("evaluation_summary")
    evaluation = cat.load("params:evaluation")
    # select on val, report on test
    assert (evaluation.selection_split, evaluation.split) == ("val", "test")
    assert summary["split"] == "test" and set(table["split"]) == {"test"}
    assert summary["queries"] == (cat.load("triplets")["split"] == "test").sum()
    assert "color/recall@10" in summary["models"]["dqe_cir"]
    # the best epoch is chosen on val: its stored metrics are what val recomputes
    assert ckpt["metrics"]["avg"] == pytest.approx(history["val/avg"].max(), abs=1e-6)
    _, on_val, _, _ = evaluate_checkpoint(
        ckpt,
        cat.load("vit_features"),
        cat.load("triplets"),
        cat.load("images"),
        cat.load("params:backbone"),
        replace(evaluation, split=evaluation.selection_split),
        cat.load("params:runtime"),
    )
    assert on_val["split"] == "val"
    assert on_val["models"]["dqe_cir"]["avg"] == pytest.approx(ckpt["metrics"]["avg"], abs=1e-6)
    ranks = cat.load("query_rankings")
    assert (ranks["rank"] >= 0).all()
    metrics = cat.load("evaluation_metrics")
    assert all("@" not in k for k in metrics)


@pytest.mark.slow
def test_cirr_submission_files_are_valid(prepared: dict[str, Any]) -> None:
    cat = prepared["catalog"]
    if not cat.exists("model_checkpoint"):
        SequentialRunner().run(register_pipelines()["training"], cat)
    # the tiny val gallery is smaller than a top-50 list: write train's "submission"
    evaluation = replace(cat.load("params:evaluation"), submission_split="train")
    cat["params:evaluation"] = MemoryDataset(evaluation, copy_mode="assign")
    SequentialRunner().run(register_pipelines()["cirr_submission"], cat)
    recall, subset = cat.load("cirr_submission_recall"), cat.load("cirr_submission_subset")
    val = cat.load("triplets").query("split == 'train'")
    assert recall["version"] == subset["version"] == "rc2"
    assert recall["metric"] == "recall" and subset["metric"] == "recall_subset"
    assert set(recall) - {"version", "metric"} == set(val["query_id"])
    row = val.iloc[0]
    assert len(recall[row.query_id]) == 50 and row.reference_id not in recall[row.query_id]
    assert len(subset[row.query_id]) == 3 and set(subset[row.query_id]) <= set(row.subset_members)


@pytest.mark.slow
def test_changed_settings_train_afresh_and_stale_checkpoints_are_refused(
    prepared: dict[str, Any],
) -> None:
    cat = prepared["catalog"]
    pipes = register_pipelines()
    if not cat.exists("model_checkpoint"):
        SequentialRunner().run(pipes["training"], cat)
    runs = prepared["tmp"] / "run"
    first = {p.name for p in runs.iterdir()}
    training = cat.load("params:training")
    changed = replace(training, optim=replace(training.optim, lr=training.optim.lr / 2))
    cat["params:training"] = MemoryDataset(changed, copy_mode="assign")
    try:
        SequentialRunner().run(pipes["training"], cat)
    finally:
        cat["params:training"] = MemoryDataset(training, copy_mode="assign")
    assert len({p.name for p in runs.iterdir()} - first) == 1  # a new run, not a resume
    history = cat.load("training_history")
    assert len(history) == training.loop.epochs  # trained every epoch again
    # a checkpoint trained on other data is refused by evaluation, naming the next step
    good = cat.load("model_checkpoint")
    cat["model_checkpoint"] = MemoryDataset(
        {**good, "data": {"fingerprint": "elsewhere"}}, copy_mode="assign"
    )
    try:
        with pytest.raises(Exception, match="trained on data 'elsewhere'.*pipelines=train"):
            SequentialRunner().run(pipes["evaluation"], cat)
    finally:
        cat["model_checkpoint"] = MemoryDataset(good, copy_mode="assign")
