"""The pretraining pipeline at tiny sizes: a corpus disjoint from the benchmark, a
save_pretrained folder that loads as a pretrained backbone, reuse when nothing changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from kedro.validation.parameter_validator import ParameterValidator

from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.data_sources.descriptions import benchmark_scenes, read_corpus
from dqe_cir_pipeline.datasets.pretrained_backbone import PretrainedBackboneDataset
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.pipeline_registry import register_pipelines


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pretraining")
    overrides = {
        "pretraining": {
            "corpus_root": str(tmp / "corpus"),
            "corpus": {"n_scenes": 160, "descriptions_per_scene": 2},
            "train": {
                "steps": 12,
                "batch_size": 16,
                "itm_pairs": 8,
                "warmup_steps": 2,
                "held_out": 32,
                "log_every": 4,
            },
        },
        "runtime": {"device": "cpu"},
    }
    params = project_config_loader("test", runtime_params=overrides)["parameters"]
    pipes = register_pipelines()
    typed = ParameterValidator(pipes).validate_raw_params(params)
    catalog = DataCatalog(
        {"pretrained_backbone": PretrainedBackboneDataset(path=str(tmp / "backbones"))}
    )
    for name in ("pretraining_corpus", "pretraining_metrics", "pretraining_curves_plot"):
        catalog[name] = MemoryDataset()
    for key, value in typed.items():
        catalog[f"params:{key}"] = MemoryDataset(value, copy_mode="assign")
    SequentialRunner().run(pipes["pretraining"], catalog)
    return {"tmp": tmp, "catalog": catalog, "typed": typed, "pipes": pipes}


def test_corpus_never_shows_a_benchmark_scene(run: dict[str, Any]) -> None:
    corpus = read_corpus(run["tmp"] / "corpus")
    assert len(corpus) == 160
    data: DataConfig = run["typed"]["data"]
    manifest = json.loads((run["tmp"] / "corpus" / "corpus.json").read_text())
    scenes = {
        tuple(sorted((o["color"], o["shape"], o["size"], o["position"]) for o in r["objects"]))
        for r in manifest
    }
    bench = {
        tuple(sorted((o.color, o.shape, o.size, o.position) for o in scene))
        for scene in benchmark_scenes(data.generator())
    }
    assert scenes and not scenes & bench


def test_pretrained_folder_loads_as_a_pretrained_backbone(run: dict[str, Any]) -> None:
    info = PretrainedBackboneDataset(path=str(run["tmp"] / "backbones")).load()
    assert info["key"].startswith("tiny-pretrained-")
    assert [h["step"] for h in info["history"]] == [4.0, 8.0, 12.0]
    assert "text_to_image/recall@1" in info["history"][-1]
    bb = load_backbone(BackboneConfig(source="pretrained", name_or_path=info["path"]))
    tiny = run["typed"]["backbone"].tiny
    assert bb.model.config.qformer_config.hidden_size == tiny.qformer_hidden
    assert bb.key.startswith("local-")
    metrics = run["catalog"].load("pretraining_metrics")
    assert "pretraining/itc" in metrics and len(metrics["pretraining/itc"]) == 3


def test_rerun_with_nothing_changed_trains_nothing(run: dict[str, Any]) -> None:
    folder = Path(PretrainedBackboneDataset(path=str(run["tmp"] / "backbones")).load()["path"])
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    SequentialRunner().run(run["pipes"]["pretraining"], run["catalog"])
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in folder.parent.iterdir() if not p.name.startswith(".")) == [
        "current.json",
        folder.name,
    ]
