"""The benchmark registry: discovery, lookups, the data block, and one layout per benchmark."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest

from dqe_cir_pipeline.data_sources import cirr, fashioniq
from dqe_cir_pipeline.data_sources import registry as reg
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.data_sources.ingest import prepare_benchmark_source
from dqe_cir_pipeline.model.protocol import BenchmarkProtocol, protocol_for

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "annotations"


def test_the_built_in_benchmarks_are_discovered_with_their_protocols() -> None:
    assert {"synthetic", "fashioniq", "cirr"} <= set(reg.benchmark_names())
    for entry in reg.benchmarks():
        assert reg.benchmark(entry.name) is entry
        assert protocol_for(entry.name) == entry.protocol  # what model/ falls back on
    assert reg.benchmark("fashioniq").protocol.per_category
    assert not reg.benchmark("fashioniq").protocol.remove_reference
    assert reg.benchmark("cirr").protocol.subset_ks == (1, 2, 3)
    assert reg.benchmark("synthetic").protocol.edit_type_breakdown
    assert reg.downloaded_benchmarks() == ("cirr", "fashioniq")
    with pytest.raises(ValueError, match="unknown benchmark 'imagenet'.*'synthetic'"):
        reg.benchmark("imagenet")


def test_data_config_has_one_block_per_benchmark_built_by_its_entry() -> None:
    names = {f.name for f in fields(DataConfig)}
    assert set(reg.benchmark_names()) <= names
    data = DataConfig(benchmark="cirr", cirr={"splits": ["val"]})
    assert data.entry is reg.benchmark("cirr")
    assert data.source is data.cirr and data.cirr.splits == ["val"]
    assert isinstance(data.fashioniq, reg.benchmark("fashioniq").source_type)
    assert asdict(data)["cirr"]["splits"] == ["val"]  # MLflow's params: data.cirr.splits
    with pytest.raises(ValueError, match="data.benchmark must be one of"):
        DataConfig(benchmark="imagenet")
    with pytest.raises(ValueError, match="fashionqi"):
        DataConfig(fashionqi={})
    with pytest.raises(ValueError, match="root is missing"):
        DataConfig(synthetic={"seed": 1})


def _opened(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[Path]:
    """Record every file the reader ``module`` loads."""
    opened: list[Path] = []
    original = module.load_json

    def load_json(path: Any, hint: str | None = None) -> Any:
        opened.append(Path(path))
        return original(path, hint=hint)

    monkeypatch.setattr(module, "load_json", load_json)
    return opened


@pytest.mark.parametrize(
    ("name", "module", "block"),
    [
        ("fashioniq", fashioniq, {"categories": ["dress"], "splits": ["train", "val"]}),
        ("cirr", cirr, {"splits": ["train", "val", "test1"], "image_only_splits": ["train"]}),
    ],
)
def test_the_reader_opens_exactly_the_files_its_layout_lists(
    name: str,
    module: Any,
    block: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The layout pre-flight checks is the one the reader reads (images absent: only the
    annotation files matter here)."""
    root = str(FIXTURES / name)
    data = DataConfig(benchmark=name, **{name: {**block, "annotation_root": root}})
    layout = data.entry.layout(data.source)
    opened = _opened(monkeypatch, module)
    data.entry.read(root, str(tmp_path), data.source, data.read_settings("exists"))
    assert sorted(opened) == sorted(f.path for f in layout.files())


def test_a_downloaded_benchmark_names_the_parameter_of_a_missing_folder(tmp_path: Path) -> None:
    data = DataConfig(benchmark="cirr", cirr={"annotation_root": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="data.cirr.annotation_root"):
        prepare_benchmark_source(data)


def test_missing_annotation_files_stop_the_first_node_naming_file_and_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CIRR without train captions stops in prepare_benchmark_source, before any image
    is looked at, naming the file and the setting that makes it unnecessary."""
    images = tmp_path / "images"
    images.mkdir()
    root = str(FIXTURES / "cirr")  # val and test1 captions, no cap.rc2.train.json
    monkeypatch.setattr(cirr, "check_images", lambda *a, **k: pytest.fail("images read"))
    data = DataConfig(benchmark="cirr", cirr={"annotation_root": root, "image_root": str(images)})
    with pytest.raises(FileNotFoundError) as err:
        prepare_benchmark_source(data)
    message = str(err.value)
    assert "cap.rc2.train.json (captions file of split 'train')" in message
    assert "data.cirr.image_only_splits" in message
    assert "cap.rc2.val.json" not in message  # only what is missing
    only_images = DataConfig(
        benchmark="cirr",
        cirr={"annotation_root": root, "image_root": str(images), "image_only_splits": ["train"]},
    )
    assert prepare_benchmark_source(only_images)["annotation_root"] == root
    # FashionIQ: the same check, with the category named
    fiq = DataConfig(
        benchmark="fashioniq",
        fashioniq={
            "annotation_root": str(FIXTURES / "fashioniq"),
            "image_root": str(images),
            "categories": ["dress", "shirt"],
        },
    )
    with pytest.raises(FileNotFoundError, match=r"cap\.shirt\.train\.json \(captions file of "):
        prepare_benchmark_source(fiq)


class _Point:
    """An installed package's entry point (name, value, what it loads)."""

    def __init__(self, name: str, loaded: object) -> None:
        self.name, self.value, self._loaded = name, f"pkg:{name}", loaded

    def load(self) -> object:
        return self._loaded


def _discover(monkeypatch: pytest.MonkeyPatch, *points: _Point) -> dict[str, Any]:
    monkeypatch.setattr(reg, "entry_points", lambda group: list(points))
    return reg._registry.__wrapped__()  # a fresh discovery, not the process's cached one


def test_an_entry_point_adds_a_benchmark_and_bad_ones_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cirr_entry = reg.benchmark("cirr")
    extra = reg.Benchmark(
        name="extra",
        source_type=cirr_entry.source_type,
        read=cirr_entry.read,
        protocol=BenchmarkProtocol(headline=("recall@1",)),
        layout=cirr_entry.layout,
    )
    assert _discover(monkeypatch, _Point("extra", extra))["extra"] is extra
    assert protocol_for("extra") == extra.protocol
    with pytest.raises(TypeError, match="expected a Benchmark"):
        _discover(monkeypatch, _Point("bad", object()))
    with pytest.raises(ValueError, match="two benchmarks are named 'cirr'"):
        _discover(monkeypatch, _Point("cirr", cirr_entry))
