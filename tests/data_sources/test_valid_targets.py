"""The triplets' ``valid_targets`` column: CIRR ``target_soft``, the generated benchmark's
ambiguous tier, FashionIQ; invalid references are quarantined, never dropped."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from dqe_cir_pipeline.data_sources.cirr import CIRRConfig, read_cirr
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQConfig, read_fashioniq
from dqe_cir_pipeline.data_sources.synthetic import ambiguous_config, generate_benchmark

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations"
VAL_ONLY = CIRRConfig(splits=("val", "test1"))
#: a val image that is neither reference nor target of pair 12060
OTHER_VAL_IMAGE = "dev-1028-2-img0"


def _save(path: Path, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
    Image.new("RGB", (9, 5), (n, 3, 7)).save(path, format=fmt)


@pytest.fixture
def cirr(tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of the CIRR excerpts and their images."""
    ann = Path(shutil.copytree(FIXTURES / "cirr", tmp_path / "ann"))
    root = tmp_path / "img"
    for f in (ann / "image_splits").glob("split.*.json"):
        for n, rel in enumerate(json.loads(f.read_text()).values()):
            _save(root / rel, n)
    return ann, root


def _edit_first(ann: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    path = ann / "captions" / "cap.rc2.val.json"
    records = json.loads(path.read_text())
    fn(records[0])
    path.write_text(json.dumps(records))


def test_cirr_keeps_the_targets_scored_one(cirr: tuple[Path, Path]) -> None:
    ann, root = cirr
    res = read_cirr(ann, root, VAL_ONLY)
    t = res.triplets.set_index("query_id")
    assert t.loc["12060", "valid_targets"] == ["dev-1028-1-img1"]
    # 12062 scores another image -1.0: not a valid target
    assert t.loc["12062", "valid_targets"] == ["dev-430-3-img0"]
    assert all(v == [] for v in t.loc[t["split"] == "test1", "valid_targets"])

    def add_one(rec: dict[str, Any]) -> None:
        rec["target_soft"][OTHER_VAL_IMAGE] = 1.0
        rec["target_soft"]["dev-430-3-img0"] = 0.5  # half-scored: not valid

    _edit_first(ann, add_one)
    t = read_cirr(ann, root, VAL_ONLY).triplets.set_index("query_id")
    assert t.loc["12060", "valid_targets"] == sorted(["dev-1028-1-img1", OTHER_VAL_IMAGE])


def test_cirr_without_target_soft_has_the_hard_target(cirr: tuple[Path, Path]) -> None:
    ann, root = cirr
    _edit_first(ann, lambda rec: rec.pop("target_soft"))
    t = read_cirr(ann, root, VAL_ONLY).triplets.set_index("query_id")
    assert t.loc["12060", "valid_targets"] == ["dev-1028-1-img1"]


def test_cirr_hard_target_is_valid_even_if_soft_omits_it(cirr: tuple[Path, Path]) -> None:
    ann, root = cirr
    _edit_first(ann, lambda rec: rec.update(target_soft={OTHER_VAL_IMAGE: 1.0}))
    t = read_cirr(ann, root, VAL_ONLY).triplets.set_index("query_id")
    assert t.loc["12060", "valid_targets"] == sorted(["dev-1028-1-img1", OTHER_VAL_IMAGE])


@pytest.mark.parametrize(
    ("soft", "reason"),
    [
        (
            {"dev-1028-1-img1": 1.0, "dev-999-0-img0": 1.0},
            "unknown image: valid target 'dev-999-0-img0' is not in the all/val image split",
        ),
        (["dev-1028-1-img1"], "bad value: 'target_soft' is list, not an object (record 0)"),
        (
            {"dev-1028-1-img1": "1.0"},
            "bad value: 'target_soft['dev-1028-1-img1']' is '1.0', not a number (record 0)",
        ),
    ],
)
def test_cirr_invalid_valid_targets_are_quarantined(
    cirr: tuple[Path, Path], soft: Any, reason: str
) -> None:
    ann, root = cirr
    _edit_first(ann, lambda rec: rec.update(target_soft=soft))
    res = read_cirr(ann, root, VAL_ONLY)
    assert "12060" not in set(res.triplets["query_id"])
    q = res.quarantine
    assert q.loc[q["kind"] == "triplet", "reason"].tolist() == [reason]
    assert q.loc[q["kind"] == "triplet", "record"].tolist() == ["12060"]


def test_cirr_valid_target_that_failed_the_image_check(cirr: tuple[Path, Path]) -> None:
    ann, root = cirr
    _edit_first(ann, lambda rec: rec["target_soft"].update({OTHER_VAL_IMAGE: 1.0}))
    (root / "dev" / f"{OTHER_VAL_IMAGE}.png").write_bytes(b"not an image")
    res = read_cirr(ann, root, CIRRConfig(splits=("val",)))
    reasons = res.quarantine.loc[res.quarantine["kind"] == "triplet", "reason"].tolist()
    expected = f"quarantined image: valid target '{OTHER_VAL_IMAGE}'"
    assert any(r.startswith(expected) for r in reasons)


def test_fashioniq_valid_targets_are_the_target(tmp_path: Path) -> None:
    ann = Path(shutil.copytree(FIXTURES / "fashioniq", tmp_path / "ann"))
    root = tmp_path / "images"

    for f in (ann / "image_splits").glob("split.*.json"):
        for n, name in enumerate(json.loads(f.read_text())):
            _save(root / f"{name}.{'png' if name[-1].isdigit() else 'jpg'}", n)
    t = read_fashioniq(ann, root, FashionIQConfig(categories=("dress",))).triplets
    labelled = t["target_id"].notna()
    assert labelled.any() and (~labelled).any()
    pairs = zip(t.loc[labelled, "valid_targets"], t.loc[labelled, "target_id"], strict=True)
    assert all(v == [tg] for v, tg in pairs)
    assert all(v == [] for v in t.loc[~labelled, "valid_targets"])


def test_generated_ambiguous_tier_lists_every_valid_target(tmp_path: Path) -> None:
    cfg = ambiguous_config(seed=1, train_families=3, val_families=2, test_families=2)
    generate_benchmark(tmp_path, cfg)
    res = read_cirr(
        tmp_path,
        tmp_path,
        CIRRConfig(
            splits=("train", "val", "test"),
            dataset_name="synthetic",
            version=None,
            unlabelled_splits=(),
        ),
    )
    assert res.quarantine.empty
    t = res.triplets
    expected = [json.loads(lab)["valid_targets"] for lab in t["edit_labels"]]
    assert t["valid_targets"].tolist() == expected
    assert all(tg in v for tg, v in zip(t["target_id"], t["valid_targets"], strict=True))
    assert max(len(v) for v in t["valid_targets"]) > 1
