"""The ablations' token file (``benchmarks/_ablation_setup.py``): encoded once, memory-mapped
by every later process, re-encoded when an image or the encoder changes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from PIL import Image

from dqe_cir_pipeline.model.backbone import Backbone
from tests.helpers.bench import on_benchmarks_path
from tests.helpers.tiny_training import tiny_backbone


@pytest.fixture(scope="module")
def setup_module_() -> Iterator[ModuleType]:
    with on_benchmarks_path():
        import _ablation_setup

        yield _ablation_setup


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Backbone:
    return tiny_backbone(tmp_path_factory.mktemp("tiny_features"))


def _images(folder: Path, n: int) -> tuple[list[str], list[str]]:
    folder.mkdir(parents=True, exist_ok=True)
    ids, paths = [], []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.new("RGB", (24, 24), (40 * i % 256, 90, 200 - 30 * i % 200)).save(path)
        ids.append(f"img{i}")
        paths.append(str(path))
    return ids, paths


def test_tokens_are_encoded_once_then_mapped_and_redone_when_an_image_changes(
    setup_module_: ModuleType,
    backbone: Backbone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mod = setup_module_
    calls: list[int] = []
    real = mod.extract_to_memory

    def counting(encoder, ids, paths, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(len(ids))
        return real(encoder, ids, paths, *args, **kwargs)

    monkeypatch.setattr(mod, "extract_to_memory", counting)
    ids, paths = _images(tmp_path / "images", 5)
    cpu = torch.device("cpu")

    first = mod.cached_features(tmp_path / "features", backbone, ids, paths, cpu)
    again = mod.cached_features(tmp_path / "features", backbone, ids, paths, cpu)
    assert calls == [5]  # the second process maps the file instead of encoding
    assert isinstance(again._tokens, np.memmap)
    order = ["img3", "img0", "img4"]
    np.testing.assert_array_equal(first.get(order), again.get(order))
    assert first.get(order).dtype == np.float16
    assert len(list((tmp_path / "features").glob("tokens-*.npy"))) == 1

    # a changed image is a new key: encoded again, its tokens differ
    Image.new("RGB", (24, 24), (255, 255, 0)).save(paths[3])
    st = os.stat(paths[3])
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = mod.cached_features(tmp_path / "features", backbone, ids, paths, cpu)
    assert calls == [5, 5]
    assert not np.array_equal(changed.get(["img3"]), first.get(["img3"]))
    np.testing.assert_array_equal(changed.get(["img1"]), first.get(["img1"]))
    # another encoder's weights are another key too
    assert mod.features_key("other", ids, paths) != mod.features_key(backbone.key, ids, paths)


def test_an_interrupted_write_leaves_no_token_file(
    setup_module_: ModuleType,
    backbone: Backbone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mod = setup_module_
    ids, paths = _images(tmp_path / "images", 3)

    def dies(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(mod.np, "save", dies)
    with pytest.raises(KeyboardInterrupt):
        mod.cached_features(tmp_path / "features", backbone, ids, paths, torch.device("cpu"))
    assert list((tmp_path / "features").iterdir()) == []
