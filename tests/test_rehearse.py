"""``benchmarks/rehearse.py``: the real annotation layout with placeholder pictures, and
the rehearsal of every stage through ``kedro run`` (slow) at a tiny scale.

The layout is checked with the benchmarks' own readers: every image the annotation
files list must be found where the reader looks, so ingestion quarantines nothing.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from dqe_cir_pipeline.data_sources.registry import ReadSettings
from dqe_cir_pipeline.data_sources.registry import benchmark as registered
from tests.conftest import ROOT

FIXTURES = ROOT / "tests" / "fixtures" / "annotations"
STAGES = ("ingestion", "extraction", "mining", "training", "evaluation", "serving")


@pytest.fixture(scope="module")
def rehearse() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("rehearse", ROOT / "benchmarks" / "rehearse.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["rehearse"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)  # puts benchmarks/ on sys.path for its siblings
    yield module
    del sys.modules["rehearse"]
    sys.path.remove(str(ROOT / "benchmarks"))


def _args(**over: object) -> Namespace:
    values: dict[str, object] = dict(
        annotations=[str(FIXTURES)],
        scale=0.001,
        train_queries=None,
        missing_captions="fill",
        image_size=16,
        workers=1,
    )
    values.update(over)
    return Namespace(**values)


def _read(module: ModuleType, ws: object, name: str, params: dict[str, object]) -> object:
    entry = registered(name)
    values = module._block_values({**ws.data_params(name), **params}, name)  # type: ignore[attr-defined]
    block = entry.source(values)
    return entry.read(block.annotation_root, block.image_root, block, ReadSettings(1, "decode"))


def test_fixture_annotations_get_every_picture_the_readers_look_for(
    rehearse: ModuleType, tmp_path: Path
) -> None:
    ws = rehearse.Workspace(tmp_path)
    fiq = rehearse.lay_out(ws, "fashioniq", _args())
    # only dress has train and val files in the excerpt; toptee has val only
    assert fiq.params == {"data.fashioniq.categories": ["dress"]}
    assert any("toptee left out" in n for n in fiq.notes)
    assert fiq.counts["dress/train"] == 10 and fiq.counts["images_written"] == 20
    cirr = rehearse.lay_out(ws, "cirr", _args(train_queries=30))
    assert cirr.trainable and any("cap.rc2.train.json absent" in n for n in cirr.notes)
    assert cirr.counts == {
        "all/train": 4,
        "all/val": 12,
        "all/test1": 6,
        "images": 22,
        "images_written": 22,
    }
    for name, made in (("fashioniq", fiq), ("cirr", cirr)):
        result = _read(rehearse, ws, name, made.params)
        assert result.quarantine.empty, result.quarantine  # type: ignore[attr-defined]
    triplets = _read(rehearse, ws, "cirr", cirr.params).triplets  # type: ignore[attr-defined]
    assert (triplets["split"] == "train").sum() == 30  # the placeholder train captions
    # the FashionIQ reader's paths: <image_root>/<asin>.jpg
    split = json.loads((FIXTURES / "fashioniq/image_splits/split.dress.train.json").read_text())
    assert all((ws.raw("fashioniq") / "images" / f"{asin}.jpg").is_file() for asin in split)


def test_image_only_mode_lists_the_split_and_trains_nothing(
    rehearse: ModuleType, tmp_path: Path
) -> None:
    ws = rehearse.Workspace(tmp_path)
    made = rehearse.lay_out(ws, "cirr", _args(missing_captions="image-only"))
    assert not made.trainable
    assert made.params["data.cirr.image_only_splits"] == ["train"]
    assert not (ws.raw("cirr") / "annotations" / "captions" / "cap.rc2.train.json").exists()
    assert _read(rehearse, ws, "cirr", made.params).quarantine.empty  # type: ignore[attr-defined]


def test_annotation_sources(rehearse: ModuleType, tmp_path: Path) -> None:
    assert rehearse.annotation_source([str(FIXTURES)], "cirr") == FIXTURES / "cirr"
    assert rehearse.annotation_source([f"cirr={tmp_path}"], "cirr") == tmp_path
    assert rehearse.annotation_source([f"cirr={tmp_path}"], "fashioniq") is None
    assert rehearse.annotation_source([str(FIXTURES / "cirr")], "cirr") == FIXTURES / "cirr"
    assert rehearse.annotation_source([], "cirr") is None


def test_disk_per_output_and_stage_walls(rehearse: ModuleType, tmp_path: Path) -> None:
    ws = rehearse.Workspace(tmp_path)
    cache = ws.data_root / "cirr" / "04_feature" / "vit_cache"
    cache.mkdir(parents=True)
    (cache / "old.npy").write_bytes(b"x" * 10)
    before = rehearse.snapshot(ws, "cirr")
    (cache / "shard-0.npy").write_bytes(b"x" * 100_000)
    (ws.raw("cirr") / "images").mkdir(parents=True)
    (ws.raw("cirr") / "images" / "a.png").write_bytes(b"x" * 100_000)  # not an output
    written = rehearse.disk_written(before, rehearse.snapshot(ws, "cirr"), "cirr")
    assert list(written) == ["04_feature/vit_cache"] and written["04_feature/vit_cache"] >= 1e5

    nodes = {
        "data_ingestion.ingest_benchmark": {"seconds": 1.0},
        "embedding_extraction.extract_vit_features": {"seconds": 0.5, "save_seconds": 3.0},
    }
    events = [
        (12.0, "data_ingestion.ingest_benchmark"),
        (14.0, "embedding_extraction.extract_vit_features"),
        (17.5, "embedding_extraction.extract_vit_features"),
    ]
    stages = rehearse.per_stage(nodes, (10.0, 20.0, events))
    assert stages["ingestion"] == {"wall_s": 2.0, "node_s": 1.0, "save_s": 0.0}
    assert stages["extraction"] == {"wall_s": 5.5, "node_s": 0.5, "save_s": 3.0}
    assert stages["after_nodes"]["wall_s"] == 2.5


@pytest.mark.slow
def test_rehearsal_runs_every_stage_and_reports_them(
    rehearse: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generated FashionIQ annotations and the CIRR excerpt (train captions filled)."""
    code = rehearse.main(
        [
            "--benchmarks",
            "fashioniq",
            "cirr",
            "--annotations",
            f"cirr={FIXTURES / 'cirr'}",
            "--work",
            str(tmp_path),
            "--scale",
            "0.002",
            "--train-queries",
            "40",
            "--image-size",
            "32",
            "--workers",
            "1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "rehearsal_report.json").read_text())
    assert report["benchmarks"].keys() == {"fashioniq", "cirr"}
    assert report["benchmarks"]["fashioniq"]["layout"]["source"] == "generated"
    assert report["benchmarks"]["cirr"]["layout"]["source"] == str(FIXTURES / "cirr")
    for name, rep in report["benchmarks"].items():
        assert f"== {name}:" in printed
        assert tuple(rep["stages"]) == STAGES
        for stage, figures in rep["stages"].items():
            assert figures["wall_s"] > 0 and figures["peak_rss_gib"] > 0.1, (name, stage)
            assert figures["nodes"] and figures["disk_bytes"] == sum(figures["outputs"].values())
        outputs = {s: set(f["outputs"]) for s, f in rep["stages"].items()}
        assert "04_feature/vit_cache" in outputs["extraction"]
        assert "05_model_input/initial_negatives.parquet" in outputs["mining"]
        assert "06_models/best_checkpoint.pt" in outputs["training"]
        assert "06_models/gallery_index" in outputs["serving"]
        rerun = rep["rerun"]
        assert rerun["pipeline"] == "train" and rerun["wall_s"] > 0
        assert set(STAGES) <= set(rerun["stages"])
        assert all(v["wall_s"] + 0.1 >= v["node_s"] for v in rerun["stages"].values())
