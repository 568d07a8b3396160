"""``kedro run --env fashioniq`` / ``--env cirr`` resolve to the paper's recipe: pairwise KL
over one mid-zone negative with the colour and shape margins against it, on the converted
LAVIS BLIP-2 ViT-L folder; the in-batch objective (ours) stays one setting away."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from dqe_cir_pipeline import settings
from dqe_cir_pipeline.model.backbone import BackboneConfig
from dqe_cir_pipeline.model.negatives import MiningConfig
from dqe_cir_pipeline.model.train_config import TrainingConfig
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's conf without a developer's own conf/local files."""
    conf = tmp_path_factory.mktemp("project") / "conf"
    shutil.copytree(ROOT / "conf", conf)
    for mine in (conf / "local").glob("*.yml"):
        if mine.name != "parameters.example.yml":
            mine.unlink()
    return conf


def _params(conf: Path, env: str, **runtime: Any) -> dict[str, Any]:
    """The parameters as the project's config loader resolves them for ``--env env``."""
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(conf), env=env, runtime_params=runtime, **settings.CONFIG_LOADER_ARGS
    )
    return loader["parameters"]


@pytest.mark.parametrize("env", ["fashioniq", "cirr"])
def test_real_data_envs_resolve_to_the_papers_objective_on_vit_l(conf: Path, env: str) -> None:
    params = _params(conf, env)
    training = TrainingConfig(**params["training"])  # validated as a run validates it
    assert training.loss.objective == "pairwise_kl"
    assert training.loss.use_margins
    assert training.loss.lambda_color > 0 and training.loss.lambda_shape > 0
    assert training.loss.margin_negatives == "mined"  # no attribute contrasts on real data
    assert training.loss.weight_order == 0.0  # ours, not the paper's
    assert training.loop.negatives == "mined"
    assert MiningConfig(**params["mining"]).strategy == "midzone"
    backbone = BackboneConfig(**params["backbone"])
    assert backbone.source == "pretrained"
    # ${project_root:} resolves to the project holding conf
    assert backbone.name_or_path == (conf.parent / "models" / "blip2-pretrain-vitL").as_posix()
    # ours, one setting away
    ours = _params(conf, env, training={"loss": {"objective": "batch_kl"}})
    assert TrainingConfig(**ours["training"]).loss.objective == "batch_kl"


def test_the_generated_benchmark_keeps_the_in_batch_objective(conf: Path) -> None:
    loss = TrainingConfig(**_params(conf, "base")["training"]).loss
    assert (loss.objective, loss.margin_negatives) == ("batch_kl", "attribute")
