"""``python -m dqe_cir_pipeline.preflight`` against small benchmark folders in ``tmp_path``.

The annotation files are the excerpts in ``tests/fixtures/annotations`` (real records);
images are tiny placeholders, some deliberately left out. The real ``fashioniq`` /
``cirr`` environments are used, pointed at ``tmp_path`` through ``DQE_DATA_ROOT``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from dqe_cir_pipeline import preflight

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "annotations"
# runtime.device=cpu: no GPU here, and the data checks are what these tests are about
CPU = "runtime.device=cpu"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DQE_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}")
    monkeypatch.setenv("DQE_MLFLOW_ARTIFACTS", (tmp_path / "mlartifacts").as_uri())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)


def _fashioniq(root: Path, missing: int) -> tuple[list[str], list[str]]:
    """FashionIQ dress excerpts under the env's default roots; ``missing`` images absent.

    Returns (ids referenced by dress train + val split files, ids written to disk).
    """
    base = root / "fashioniq" / "01_raw"
    shutil.copytree(FIXTURES / "fashioniq", base / "annotations")
    ids: list[str] = []
    for split in ("train", "val"):
        for image_id in json.loads(
            (base / "annotations" / "image_splits" / f"split.dress.{split}.json").read_text()
        ):
            if image_id not in ids:
                ids.append(image_id)
    present = ids[missing:]
    for image_id in present:
        _image(base / "images" / f"{image_id}.jpg")
    return ids, present


def _check(report: preflight.Report, name: str) -> preflight.Check:
    return next(c for c in report.checks if c.name == name)


def test_parse_params_nests_dotted_keys() -> None:
    assert preflight.parse_params("a.b=1,a.c=x,d=[train, val],e=null") == {
        "a": {"b": 1, "c": "x"},
        "d": ["train", "val"],
        "e": None,
    }
    assert preflight.parse_params(None) == {}
    with pytest.raises(ValueError, match="key=value"):
        preflight.parse_params("oops")


def test_fashioniq_counts_missing_images_and_blocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ids, present = _fashioniq(tmp_path, missing=2)
    rc = preflight.main(
        [
            "--env",
            "fashioniq",
            "--skip-backbone",
            "--params",
            f"data.fashioniq.categories=[dress],{CPU}",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert f"{len(present)}/{len(ids)} referenced images found" in out
    assert "[FAIL] images" in out
    assert "NOT READY" in out
    # both dress split files and both caption files of train + val, all valid
    assert "4/4 files present and valid JSON" in out
    assert ids[0] in out  # a missing id is named


def test_fashioniq_ready_when_everything_is_there(tmp_path: Path) -> None:
    ids, _ = _fashioniq(tmp_path, missing=0)
    report = preflight.run_checks(
        "fashioniq",
        Path(preflight.__file__).resolve().parents[2],
        preflight.parse_params(f"data.fashioniq.categories=[dress],{CPU}"),
        skip_backbone=True,
    )
    assert report.exit_code == 0, report.render()
    assert report.numbers["images_referenced"] == len(ids)
    assert report.numbers["images_found_fraction"] == 1.0
    train = json.loads((FIXTURES / "fashioniq" / "captions" / "cap.dress.train.json").read_text())
    val = json.loads((FIXTURES / "fashioniq" / "captions" / "cap.dress.val.json").read_text())
    assert report.numbers["caption_records"] == len(train) + len(val)
    # the env's converted ViT-L folder is not there: its size is unknown, not ViT-g's
    assert report.numbers["cache_bytes_needed"] is None
    disk = _check(report, "disk")
    assert disk.status == preflight.WARN and "size unknown" in disk.summary
    assert any("257 x 1024" in d for d in disk.details)  # the sizes for reference
    assert _check(report, "backbone").status == preflight.WARN  # skipped, not blocking
    assert _check(report, "gpu").status in (preflight.WARN, preflight.PASS)  # device=cpu


def test_missing_annotation_file_is_named(tmp_path: Path) -> None:
    _fashioniq(tmp_path, missing=0)
    (tmp_path / "fashioniq" / "01_raw" / "annotations" / "captions" / "cap.dress.val.json").unlink()
    report = preflight.run_checks(
        "fashioniq",
        Path(preflight.__file__).resolve().parents[2],
        preflight.parse_params(f"data.fashioniq.categories=[dress],{CPU}"),
        skip_backbone=True,
    )
    check = _check(report, "annotations")
    assert check.status == preflight.FAIL
    assert "3/4 files" in check.summary
    assert any("cap.dress.val.json" in d for d in check.details)
    assert report.exit_code == 1


def test_missing_weights_message_names_the_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _fashioniq(tmp_path, missing=0)
    weights = tmp_path / "no_such_weights"
    rc = preflight.main(
        [
            "--env",
            "fashioniq",
            "--params",
            f"data.fashioniq.categories=[dress],{CPU},backbone.name_or_path={weights}",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "[FAIL] backbone" in out
    assert "backbone.name_or_path" in out
    assert str(weights) in out
    assert "hf download" in out  # the loader's own instructions are shown


def test_cirr_needs_train_captions_unless_image_only(tmp_path: Path) -> None:
    base = tmp_path / "cirr" / "01_raw"
    shutil.copytree(FIXTURES / "cirr", base / "annotations")
    rels: dict[str, str] = {}
    for split in ("train", "val", "test1"):
        rels.update(
            json.loads(
                (base / "annotations" / "image_splits" / f"split.rc2.{split}.json").read_text()
            )
        )
    absent = sorted(rels)[0]
    for name, rel in rels.items():
        if name != absent:
            _image(base / "images" / rel)
    project = Path(preflight.__file__).resolve().parents[2]

    # default CIRR env: train captions are required, and the fixture has none
    report = preflight.run_checks("cirr", project, preflight.parse_params(CPU), skip_backbone=True)
    check = _check(report, "annotations")
    assert check.status == preflight.FAIL
    assert any("cap.rc2.train.json" in d for d in check.details)

    report = preflight.run_checks(
        "cirr",
        project,
        preflight.parse_params(f"data.cirr.image_only_splits=[train],{CPU}"),
        skip_backbone=True,
    )
    assert _check(report, "annotations").status == preflight.PASS
    assert report.numbers["images_referenced"] == len(rels)
    assert report.numbers["images_found"] == len(rels) - 1
    # 1 of a handful missing is far above the 2 % ingestion tolerates
    assert _check(report, "images").status == preflight.FAIL
    assert report.exit_code == 1


def _vit_l_config(folder: Path) -> None:
    """A folder holding only the config.json of a converted ViT-L (no weights)."""
    from transformers import Blip2Config, Blip2VisionConfig

    vision = Blip2VisionConfig(
        hidden_size=1024, num_hidden_layers=23, image_size=224, patch_size=14
    ).to_dict()
    config = Blip2Config(vision_config=vision)
    config.lavis_vision = {"tower": "clip_vit", "depth": 23}
    config.save_pretrained(str(folder))


@pytest.mark.parametrize("backbone", ["vitl", "tiny"])
def test_cache_size_is_the_configured_backbones(tmp_path: Path, backbone: str) -> None:
    """The estimate is tokens x width of the backbone the run will use, read from its
    configuration (also with --skip-backbone), not a fixed ViT-g grid."""
    ids, _ = _fashioniq(tmp_path, missing=0)
    folder = tmp_path / "blip2-pretrain-vitL"
    _vit_l_config(folder)
    params = f"data.fashioniq.categories=[dress],{CPU},backbone.name_or_path={folder}"
    if backbone == "tiny":
        params += ",backbone.source=tiny,backbone.tiny.vision_hidden=96"
    report = preflight.run_checks(
        "fashioniq",
        Path(preflight.__file__).resolve().parents[2],
        preflight.parse_params(params),
        skip_backbone=True,
    )
    tokens, width = (257, 1024) if backbone == "vitl" else ((64 // 8) ** 2 + 1, 96)
    assert report.numbers["cache_bytes_needed"] == len(ids) * tokens * width * 2
    disk = _check(report, "disk")
    assert f"{tokens} tokens x {width} wide" in disk.summary
    label = "clip_vit depth 23" if backbone == "vitl" else "tiny preset"
    assert any(label in d for d in disk.details), disk.details
