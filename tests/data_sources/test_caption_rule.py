"""Semantically empty captions (blank, or a placeholder such as ``n/a`` or a bare number)
are read as empty text by both readers, counted, and quarantined only when a record has
no usable caption left (docs/data.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.common import (
    CAPTION_BLANK,
    CAPTION_OK,
    CAPTION_PLACEHOLDER,
    caption_status,
)
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq
from dqe_cir_pipeline.pipelines.data_ingestion.nodes import validate_ingestion

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations"
DRESS = FashionIQConfig(categories=("dress",), image_check="exists")


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("na", CAPTION_PLACEHOLDER),
        ("n/a", CAPTION_PLACEHOLDER),
        ("N/A", CAPTION_PLACEHOLDER),
        (" None.", CAPTION_PLACEHOLDER),
        ("2", CAPTION_PLACEHOLDER),
        ("12 ", CAPTION_PLACEHOLDER),
        ("", CAPTION_BLANK),
        (" ", CAPTION_BLANK),
        (".", CAPTION_BLANK),
        ("none of the above, longer", CAPTION_OK),
        ("has 2 straps", CAPTION_OK),
        ("nan", CAPTION_OK),
        ("is written Jones New York", CAPTION_OK),
    ],
)
def test_caption_status(text: str, status: str) -> None:
    assert caption_status(text) == status


@pytest.fixture
def fiq(tmp_path: Path) -> tuple[Path, Path]:
    """The placeholder excerpts and a tiny image for every id they list."""
    ann = Path(shutil.copytree(FIXTURES / "fashioniq_placeholders", tmp_path / "ann"))
    images = tmp_path / "images"
    images.mkdir()
    for f in (ann / "image_splits").glob("split.*.json"):
        for image_id in json.loads(f.read_text()):
            Image.new("RGB", (4, 4), (9, 9, 9)).save(images / f"{image_id}.jpg")
    return ann, images


def test_fashioniq_placeholders_are_empty_text_and_counted(fiq: tuple[Path, Path]) -> None:
    res = read_fashioniq(*fiq, DRESS)
    t = res.triplets.set_index("query_id")
    # real train record 177, ["is written Jones New York", "na"]: the first caption alone
    assert t.loc["dress-train-1", "caption_eval"] == "Is written jones new york"
    assert t.loc["dress-train-1", "captions_train"] == ["Is written jones new york"]
    # "N/A", "none" and a bare "2" first: the second caption alone
    assert t.loc["dress-train-2", "caption_eval"] == "Has lace overlay and a narrow belt"
    assert t.loc["dress-train-3", "captions_train"] == ["White and black print"]
    assert t.loc["dress-train-4", "caption_eval"] == "Has a more closed neckline"
    assert t.loc["dress-val-0", "caption_eval"] == "Shorter skirt"
    assert len(t.loc["dress-train-0", "captions_train"]) == 4  # an ordinary record
    assert not t["caption_eval"].str.contains(r"\bna\b|n/a|none", case=False).any()
    # the raw captions stay as annotated
    assert t.loc["dress-train-1", "captions_raw"] == ["is written Jones New York", "na"]
    counts = res.counts()
    assert counts["captions_placeholder"] == 7  # train 4, val 2, test 1 (record 269)
    assert counts["captions_blank"] == 0


def test_a_record_without_a_usable_caption_is_quarantined_by_name(
    fiq: tuple[Path, Path],
) -> None:
    res = read_fashioniq(*fiq, DRESS)
    [row] = res.quarantine.itertuples(index=False)
    assert row.record == "dress-test-1" and row.source_file.endswith("cap.dress.test.json")
    assert row.reason == (
        "empty captions: record 1 of cap.dress.test.json has no usable caption: "
        "'n/a' (a placeholder), 'na' (a placeholder)"
    )
    assert "dress-test-1" not in set(res.triplets["query_id"])


def test_ingestion_reports_the_counts_and_the_metric(fiq: tuple[Path, Path]) -> None:
    res = read_fashioniq(*fiq, DRESS)
    data = DataConfig(benchmark="fashioniq", fashioniq={"categories": ["dress"]})
    checks = {"checked": len(res.images), "reused": 0}
    report, metrics, _ = validate_ingestion(res.images, res.triplets, res.quarantine, checks, data)
    assert report["counts"]["captions_placeholder"] == 7
    assert metrics["ingestion/captions_placeholder"]["value"] == 7.0
    assert metrics["ingestion/captions_blank"]["value"] == 0.0


def test_cirr_blank_and_placeholder_captions_are_kept_as_empty_text(tmp_path: Path) -> None:
    ann = Path(shutil.copytree(FIXTURES / "cirr", tmp_path / "ann"))
    for f in (ann / "image_splits").glob("split.*.json"):
        for rel in json.loads(f.read_text()).values():
            (tmp_path / "img" / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / "img" / rel, format="PNG")
    test1 = ann / "captions" / "cap.rc2.test1.json"
    recs = json.loads(test1.read_text())
    recs[0]["caption"] = " "  # as real test1 pairid 27098
    recs[1]["caption"] = "N/A"
    test1.write_text(json.dumps(recs))
    cfg = CIRRConfig(splits=("test1",), image_check="exists")
    res = read_cirr(ann, tmp_path / "img", cfg)
    t = res.triplets.set_index("query_id")
    assert len(t) == len(recs) and res.quarantine.empty  # every test1 pairid is kept
    assert t.loc[str(recs[0]["pairid"]), "caption_eval"] == ""
    assert t.loc[str(recs[1]["pairid"]), "captions_train"] == [""]
    assert t.loc[str(recs[2]["pairid"]), "caption_eval"] == recs[2]["caption"].strip()
    counts = res.counts()
    assert (counts["captions_blank"], counts["captions_placeholder"]) == (1, 1)
