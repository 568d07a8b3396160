"""``conf/local`` reaches the real-data environments; ``--params`` still wins; ``test``
stays isolated."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dqe_cir_pipeline import settings
from dqe_cir_pipeline.config_loader import LocalOverlayConfigLoader, project_config_loader
from tests.conftest import ROOT


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))


def test_overlay_merges_key_by_key_and_runtime_params_win(tmp_path: Path) -> None:
    _write(tmp_path / "base/parameters.yml", {"a": {"x": 1, "y": 2}, "b": 1})
    _write(tmp_path / "fashioniq/parameters.yml", {"a": {"x": 10}})
    _write(tmp_path / "test/parameters.yml", {"b": 5})
    _write(tmp_path / "local/parameters.yml", {"a": {"y": 20}, "c": 3})

    def load(env: str | None, **runtime: object) -> dict:
        return LocalOverlayConfigLoader(
            conf_source=str(tmp_path),
            env=env,
            runtime_params=runtime,
            base_env="base",
            default_run_env="local",
            merge_strategy={"parameters": "soft"},
            local_overlay_envs=("fashioniq",),
        )["parameters"]

    assert load("fashioniq") == {"a": {"x": 10, "y": 20}, "b": 1, "c": 3}
    assert load("fashioniq", a={"y": 99}) == {"a": {"x": 10, "y": 99}, "b": 1, "c": 3}
    assert load("test") == {"a": {"x": 1, "y": 2}, "b": 5}  # not an overlay env
    assert load(None) == {
        "a": {"x": 1, "y": 20},
        "b": 1,
        "c": 3,
    }  # plain run: Kedro's own base + local


def test_the_log_lists_what_conf_local_overrides_and_params_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(tmp_path / "base/parameters.yml", {"a": {"x": 1}, "b": 1, "d": 1})
    _write(tmp_path / "fashioniq/parameters.yml", {"a": {"x": 10}})
    _write(tmp_path / "local/parameters.yml", {"a": {"y": 20}, "c": 5})

    def load(**runtime: object) -> dict:
        return LocalOverlayConfigLoader(
            conf_source=str(tmp_path),
            env="fashioniq",
            runtime_params=runtime,
            base_env="base",
            default_run_env="local",
            merge_strategy={"parameters": "soft"},
            local_overlay_envs=("fashioniq",),
        )["parameters"]

    with caplog.at_level(logging.INFO, logger="dqe_cir_pipeline.config_loader"):
        params = load(b=2, a={"y": 99})
    assert params == {"a": {"x": 10, "y": 99}, "b": 2, "c": 5, "d": 1}  # --params wins
    lines = [r.getMessage() for r in caplog.records]
    assert "conf/local overrides ['a', 'c'] for --env fashioniq" in lines  # not b
    assert "--params overrides ['a', 'b']" in lines


def test_project_envs_read_a_users_local_weights_and_data_roots(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    for mine in (conf / "local").glob("*.yml"):  # a developer's own local files stay out
        if mine.name != "parameters.example.yml":
            mine.unlink()
    _write(
        conf / "local/parameters.yml",
        {
            "backbone": {"name_or_path": "/models/blip2-itm-vit-g"},
            "data": {"cirr": {"image_root": "/datasets/cirr/img_raw"}},
        },
    )

    def load(env: str, **runtime: object) -> dict:
        return settings.CONFIG_LOADER_CLASS(
            conf_source=str(conf), env=env, runtime_params=runtime, **settings.CONFIG_LOADER_ARGS
        )["parameters"]

    cirr = load("cirr")
    assert cirr["backbone"]["name_or_path"] == "/models/blip2-itm-vit-g"
    assert cirr["backbone"]["source"] == "pretrained"  # the env's value survives the overlay
    assert cirr["data"]["cirr"]["image_root"] == "/datasets/cirr/img_raw"
    assert cirr["data"]["cirr"]["annotation_root"].endswith("cirr/01_raw/annotations")
    assert cirr["training"]["optim"]["lr"] == 1.0e-5
    assert load("fashioniq")["backbone"]["name_or_path"] == "/models/blip2-itm-vit-g"
    assert load("cirr", backbone={"name_or_path": "/other"})["backbone"]["name_or_path"] == "/other"
    # CI stays isolated: the test env keeps conf/base's shipped backbone
    assert load("test")["backbone"]["name_or_path"].endswith("models/tiny-blip2-synthetic")


def _leaves(
    tree: dict[str, Any], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def test_project_config_loader_reads_the_project_conf_as_kedro_run_does() -> None:
    base = project_config_loader("base")["parameters"]
    test = project_config_loader("test")["parameters"]
    override = yaml.safe_load((ROOT / "conf" / "test" / "parameters.yml").read_text())
    for path, value in _leaves(override):  # the env's values, merged key by key over base
        node: Any = test
        for key in path:
            node = node[key]
        assert node == value, path
    assert {k: v for k, v in base.items() if k not in override} == {
        k: v for k, v in test.items() if k not in override
    }
    assert not [p for p, v in _leaves(base) if isinstance(v, str) and "${" in v]  # resolved
    runtime = project_config_loader("test", runtime_params={"runtime": {"device": "meta"}})
    assert runtime["parameters"]["runtime"]["device"] == "meta"  # --params still wins


def test_an_unknown_environment_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"unknown environment --env 'nosuchenv'.*cirr.*test"):
        project_config_loader("nosuchenv")
