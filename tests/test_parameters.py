"""Typed parameters: one source of defaults, and every block refuses bad keys by name."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any

import pytest
from kedro.validation.exceptions import ParameterValidationError
from kedro.validation.parameter_validator import ParameterValidator

from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.data_sources.config import DataConfig
from dqe_cir_pipeline.model.backbone import BackboneConfig
from dqe_cir_pipeline.model.config import RuntimeConfig
from dqe_cir_pipeline.model.evaluate import EvaluationConfig
from dqe_cir_pipeline.model.negatives import MiningConfig
from dqe_cir_pipeline.model.train_config import TrainingConfig
from dqe_cir_pipeline.pipeline_registry import register_pipelines
from dqe_cir_pipeline.pipelines.embedding_extraction.nodes import ExtractionConfig
from dqe_cir_pipeline.serving.config import ServingConfig

BLOCKS: dict[str, type] = {
    "data": DataConfig,
    "backbone": BackboneConfig,
    "runtime": RuntimeConfig,
    "extraction": ExtractionConfig,
    "mining": MiningConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "serving": ServingConfig,
}
#: Paths under the data root: the YAML resolves them, the dataclass cannot know them.
LOCATIONS = {
    ("backbone", "tiny_dir"),
    ("backbone", "name_or_path"),
    ("training", "loop", "run_dir"),
    ("data", "benchmark"),  # from the environment's globals.yml
    ("data", "synthetic"),  # checked below against the generator's own configuration
    ("data", "fashioniq", "annotation_root"),
    ("data", "fashioniq", "image_root"),
    ("data", "cirr", "annotation_root"),
    ("data", "cirr", "image_root"),
}


@pytest.fixture(scope="module")
def base_params() -> dict[str, Any]:
    return project_config_loader("base")["parameters"]


def _drop_locations(values: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if path + (key,) in LOCATIONS:
            continue
        out[key] = _drop_locations(value, path + (key,)) if isinstance(value, dict) else value
    return out


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_dataclass_defaults_equal_conf_base(block: str, base_params: dict[str, Any]) -> None:
    defaults = _drop_locations(asdict(BLOCKS[block]()), (block,))
    assert _drop_locations(base_params[block], (block,)) == defaults


def test_every_typed_block_is_validated_at_startup(base_params: dict[str, Any]) -> None:
    validated = ParameterValidator(register_pipelines()).validate_raw_params(base_params)
    for block, cls in BLOCKS.items():
        assert isinstance(validated[block], cls), block


@pytest.mark.parametrize(
    ("path", "value", "named"),
    [
        (("training", "loop", "epochz"), 3, "epochz"),
        (("training", "loop", "epochs"), "three", "epochs"),
        (("training", "optim", "lr"), "fast", "lr"),
        (("mining", "zone_quantil"), 0.1, "zone_quantil"),
        (("evaluation", "ks"), "ten", "ks"),
        (("backbone", "tiny", "vision_layerz"), 2, "vision_layerz"),
        (("runtime", "amp_dtype"), "int8", "amp_dtype"),
        (("data", "synthetic", "val_familys"), 3, "val_familys"),
        (("data", "cirr", "split"), ["val"], "split"),
        (("data", "benchmark"), "imagenet", "imagenet"),
        (("serving", "top_kk"), 5, "top_kk"),
        (("serving", "ann_encoding"), "PQ", "ann_encoding"),
    ],
)
def test_bad_keys_and_types_are_refused_by_name(
    path: tuple[str, ...], value: object, named: str, base_params: dict[str, Any]
) -> None:
    params = copy.deepcopy(base_params)
    node = params
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ParameterValidationError, match=named):
        ParameterValidator(register_pipelines()).validate_raw_params(params)


@pytest.mark.parametrize(
    ("env", "selection_split", "split"),
    [
        ("base", "val", "test"),  # the generated benchmark: select on val, report on test
        ("test", "val", "test"),
        ("fashioniq", "val", "val"),  # test targets were never released
        ("cirr", "val", "val"),  # test1 is scored by the evaluation server
    ],
)
def test_selection_and_reported_split_per_environment(
    env: str, selection_split: str, split: str
) -> None:
    params = project_config_loader(env)["parameters"]
    evaluation = ParameterValidator(register_pipelines()).validate_raw_params(params)["evaluation"]
    assert (evaluation.selection_split, evaluation.split) == (selection_split, split)
    if split == "test":  # the reported split exists: the generator writes test families
        assert DataConfig(**params["data"]).generator().test_families > 0
