"""Every path resolves from the Kedro project a command runs in (the current directory, or
the folder holding ``--conf-source``), never from where the package is installed: two
checkouts sharing one environment each read and write their own files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import dqe_cir_pipeline
from dqe_cir_pipeline import settings
from dqe_cir_pipeline.config_loader import kedro_project_root
from dqe_cir_pipeline.model.backbone import SHIPPED_MODELS, BackboneConfig, load_backbone
from tests.conftest import ROOT

#: Variables that would point every project at one place.
SHARED = ("DQE_DATA_ROOT", "MLFLOW_TRACKING_URI", "DQE_MLFLOW_ARTIFACTS")


def _project(where: Path) -> Path:
    """A Kedro project folder with this repository's configuration and no code of its
    own: the package comes from the interpreter, as for a second checkout."""
    where.mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", where / "pyproject.toml")
    (where / "src").mkdir()
    shutil.copytree(ROOT / "conf", where / "conf", ignore=shutil.ignore_patterns("local"))
    (where / "conf" / "local").mkdir()
    return where


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in SHARED:
        monkeypatch.delenv(name, raising=False)
    package_parent = str(Path(dqe_cir_pipeline.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": package_parent}


def test_two_projects_sharing_one_interpreter_resolve_their_own_paths(
    tmp_path: Path, plain_env: dict[str, str]
) -> None:
    first, second = _project(tmp_path / "first"), _project(tmp_path / "second")
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from dqe_cir_pipeline.config_loader import kedro_project_root, project_config_loader\n"
        "here = project_config_loader('test')\n"  # the project of the current directory
        "there = project_config_loader('test', project_path=sys.argv[1])\n"
        "def paths(loader):\n"
        "    loader.config_patterns['mlflow'] = ['mlflow*']  # as kedro-mlflow registers it\n"
        "    return {\n"
        "        'images': loader['catalog']['images']['filepath'],\n"
        "        'backbone': loader['parameters']['backbone']['name_or_path'],\n"
        "        'store': loader['mlflow']['server']['mlflow_tracking_uri'],\n"
        "    }\n"
        "print(json.dumps({'here': paths(here), 'there': paths(there),\n"
        "    'root': str(kedro_project_root())}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(second)],
        cwd=first / "conf",  # inside the project, as `kedro` may be run
        env=plain_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["root"]) == first.resolve()
    for name, project in (("here", first.resolve()), ("there", second.resolve())):
        paths = found[name]
        assert Path(paths["images"]).is_relative_to(project / "data"), paths
        assert Path(paths["backbone"]) == project / "models" / "tiny-blip2-synthetic"
        assert paths["store"] == f"sqlite:///{(project / 'mlflow.db').as_posix()}"


def test_a_conf_archive_resolves_from_its_folder_and_finds_the_packaged_backbone(
    tmp_path: Path, plain_env: dict[str, str]
) -> None:
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    archive = deploy / "conf-dqe_cir_pipeline.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # as `kedro package` writes it
        tar.add(ROOT / "conf", arcname="conf", filter=lambda t: None if "/local/" in t.name else t)
    assert kedro_project_root(archive) == deploy.resolve()
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(archive), env="test", **settings.CONFIG_LOADER_ARGS
    )
    params = loader["parameters"]
    assert Path(params["data"]["synthetic"]["root"]).is_relative_to(deploy.resolve() / "data")
    backbone = BackboneConfig(**params["backbone"])
    assert not Path(backbone.name_or_path).exists()  # no models/ beside the archive
    loaded = load_backbone(backbone)  # the copy shipped as package data
    assert Path(loaded.name) == SHIPPED_MODELS / "tiny-blip2-synthetic"
    shipped = json.loads((ROOT / "models/tiny-blip2-synthetic/SHIPPED.json").read_text())
    assert set(shipped["sha256"]) <= {p.name for p in Path(loaded.name).iterdir()}
