"""Re-runs: nothing changed reuses the image checks and the mined negatives (the same
outputs); a change re-checks or re-mines what it touches, never returns an old result.

Each run is a fresh catalog over the same folders, as a new ``kedro run`` is: the
in-memory datasets start empty, the stored ones (record, feature cache, negatives)
are read back from disk.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner
from PIL import Image

from dqe_cir_pipeline.data_sources import image_check
from dqe_cir_pipeline.pipeline_registry import register_pipelines
from tests.pipelines.conftest import catalog_for, load_params

STAGES = ("data_ingestion", "embedding_extraction", "negative_mining")
TABLES = ("images", "triplets", "quarantine", "initial_negatives")


@pytest.fixture(autouse=True)
def _settled_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record files however recently written: the generated ones are seconds old."""
    monkeypatch.setattr(image_check, "SETTLE_NS", 0)


def _run(tmp: Path, params: dict[str, Any]) -> DataCatalog:
    """One run of ingestion, extraction and mining as a new ``kedro run`` would do it."""
    catalog = catalog_for(params, tmp)
    pipes = register_pipelines()
    SequentialRunner().run(sum((pipes[name] for name in STAGES[1:]), pipes[STAGES[0]]), catalog)
    return catalog


def _metric(catalog: DataCatalog, dataset: str, key: str) -> float:
    return float(catalog.load(dataset)[key]["value"])


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first run of a tiny generated benchmark."""
    tmp = tmp_path_factory.mktemp("rerun")
    params = load_params(tmp)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(image_check, "SETTLE_NS", 0)
        catalog = _run(tmp, params)
    return {"tmp": tmp, "params": params, "catalog": catalog}


def test_the_first_run_checks_and_mines(first: dict[str, Any]) -> None:
    cat = first["catalog"]
    files = cat.load("images")["path"].nunique()
    assert _metric(cat, "ingestion_metrics", "ingestion/images_rechecked") == files
    assert _metric(cat, "ingestion_metrics", "ingestion/images_reused") == 0
    assert cat.load("ingestion_report")["image_check"]["recorded"] == files
    assert _metric(cat, "mining_metrics", "mining/initial.reused") == 0.0


def test_no_change_rerun_reuses_checks_and_negatives(
    first: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        again = _run(first["tmp"], first["params"])
    old = first["catalog"]
    files = old.load("images")["path"].nunique()
    assert _metric(again, "ingestion_metrics", "ingestion/images_rechecked") == 0
    assert _metric(again, "ingestion_metrics", "ingestion/images_reused") == files
    assert _metric(again, "mining_metrics", "mining/initial.reused") == 1.0
    assert f"image files: {files} reused" in caplog.text
    assert "reused, nothing mined" in caplog.text
    for name in TABLES:
        pd.testing.assert_frame_equal(again.load(name), old.load(name))
    report, before = again.load("ingestion_report"), old.load("ingestion_report")
    assert report.pop("image_check")["reused"] == files
    assert report == {k: v for k, v in before.items() if k != "image_check"}
    mined = {k: v for k, v in again.load("mining_metrics").items() if k != "mining/initial.reused"}
    assert mined == {k: v for k, v in old.load("mining_metrics").items() if k in mined}
    pd.testing.assert_frame_equal(
        again.load("negative_mining.delta_sample"), old.load("negative_mining.delta_sample")
    )


def test_a_changed_mining_setting_mines_again(first: dict[str, Any]) -> None:
    params = copy.deepcopy(first["params"])
    params["mining"]["epsilon"] = 2 * params["mining"]["epsilon"] + 0.01
    changed = _run(first["tmp"], params)
    assert _metric(changed, "ingestion_metrics", "ingestion/images_rechecked") == 0
    assert _metric(changed, "mining_metrics", "mining/initial.reused") == 0.0
    upper = changed.load("initial_negatives")["upper"]
    assert not upper.equals(first["catalog"].load("initial_negatives")["upper"])
    back = _run(first["tmp"], first["params"])  # the first settings' negatives are kept
    assert _metric(back, "mining_metrics", "mining/initial.reused") == 1.0
    pd.testing.assert_frame_equal(
        back.load("initial_negatives"), first["catalog"].load("initial_negatives")
    )


def test_a_changed_image_is_checked_alone_and_mined_again(first: dict[str, Any]) -> None:
    old = first["catalog"]
    images = old.load("images")
    path = images.loc[images["split"] == "train", "path"].iloc[0]
    with Image.open(path) as img:
        edited = img.convert("RGB")
    edited.putpixel((0, 0), tuple(255 - c for c in edited.getpixel((0, 0))))
    edited.save(path, format="PNG")
    changed = _run(first["tmp"], first["params"])
    files = images["path"].nunique()
    assert _metric(changed, "ingestion_metrics", "ingestion/images_rechecked") == 1
    assert _metric(changed, "ingestion_metrics", "ingestion/images_reused") == files - 1
    new_hash = changed.load("images").set_index("path")["content_hash"]
    assert new_hash[path] != images.set_index("path")["content_hash"][path]
    report, before = changed.load("ingestion_report"), old.load("ingestion_report")
    assert report["fingerprint"] != before["fingerprint"]  # the data changed
    assert changed.load("extraction_report")["last_save"]["computed"] == 1
    assert _metric(changed, "mining_metrics", "mining/initial.reused") == 0.0
