"""Tests for the atomic, versioned, weights_only checkpoint dataset and its helpers."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from kedro.io import DataCatalog
from kedro.io.core import DatasetError, Version

from dqe_cir_pipeline.datasets.checkpoint import (
    CheckpointMismatchError,
    TorchCheckpointDataset,
    capture_rng_state,
    load_trainable_state,
    restore_rng_state,
)

EXECUTED: list[str] = []


def _record_execution() -> str:
    EXECUTED.append("code ran")
    return "pwned"


class _Arbitrary:
    """An object whose unpickling would run code (it calls ``_record_execution``)."""

    def __reduce__(self) -> tuple:
        return (_record_execution, ())


CONFIG = {"hidden": 8, "layers": 2, "qformer": {"num_query_tokens": 4}, "dims": [8, 4]}
BACKBONE = {"key": "tiny-vit", "name": "local/tiny"}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))


def _checkpoint(epoch: int = 1) -> tuple[dict, torch.nn.Module]:
    model = _model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for _ in range(2):  # populate Adam moments
        optimizer.zero_grad()
        model(torch.randn(3, 8)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
    ckpt = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng_state(),
        "epoch": epoch,
        "config": CONFIG,
        "backbone": BACKBONE,
        "metrics": {"val/recall@10": 0.25, "history": [0.1, 0.2]},
    }
    return ckpt, model


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b


def _draws() -> tuple[list[float], np.ndarray, torch.Tensor]:
    return (
        [random.random() for _ in range(3)] + [random.gauss(0, 1)],
        np.random.standard_normal(5),
        torch.randn(5),
    )


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    ckpt, _ = _checkpoint()
    dataset = TorchCheckpointDataset(filepath=str(tmp_path / "ckpt.pt"))
    dataset.save(ckpt)
    loaded = dataset.load()
    _assert_same(ckpt, loaded)
    assert loaded["optimizer"]["state"][0]["exp_avg"].abs().sum() > 0


def test_optimizer_state_resumes_identically(tmp_path: Path) -> None:
    ckpt, model = _checkpoint()
    dataset = TorchCheckpointDataset(filepath=str(tmp_path / "ckpt.pt"))
    dataset.save(ckpt)
    loaded = dataset.load()

    resumed = _model()
    resumed.load_state_dict(loaded["model"])
    opt_a = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_a.load_state_dict(ckpt["optimizer"])
    opt_b = torch.optim.AdamW(resumed.parameters(), lr=1e-3)
    opt_b.load_state_dict(loaded["optimizer"])
    batch = torch.randn(3, 8)
    for net, opt in ((model, opt_a), (resumed, opt_b)):
        opt.zero_grad()
        net(batch).pow(2).sum().backward()
        opt.step()
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


def test_rng_state_survives_weights_only_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gauss value in Python's state
    np.random.standard_normal()  # and in numpy's
    dataset = TorchCheckpointDataset(filepath=str(tmp_path / "rng.pt"))
    dataset.save({"rng": capture_rng_state()})
    expected = _draws()

    _draws()  # move every generator on
    restore_rng_state(dataset.load()["rng"])
    got = _draws()
    assert got[0] == expected[0]
    np.testing.assert_array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


def test_exists_and_missing_file(tmp_path: Path) -> None:
    dataset = TorchCheckpointDataset(filepath=str(tmp_path / "nope" / "ckpt.pt"))
    assert not dataset.exists()
    with pytest.raises(DatasetError, match="does not exist"):
        dataset.load()
    dataset.save({"epoch": 0})
    assert dataset.exists()


def test_versioned_save_and_load(tmp_path: Path) -> None:
    filepath = str(tmp_path / "ckpt.pt")
    v1, v2 = "2026-01-01T00.00.00.000Z", "2026-01-02T00.00.00.000Z"
    TorchCheckpointDataset(filepath=filepath, version=Version(None, v1)).save({"epoch": 1})
    TorchCheckpointDataset(filepath=filepath, version=Version(None, v2)).save({"epoch": 2})
    assert (tmp_path / "ckpt.pt" / v1 / "ckpt.pt").is_file()

    latest = TorchCheckpointDataset(filepath=filepath, version=Version(None, None))
    assert latest.exists()
    assert latest.load()["epoch"] == 2
    assert latest.list_versions(full_path=False) == [v2, v1]
    pinned = TorchCheckpointDataset(filepath=filepath, version=Version(v1, None))
    assert pinned.load()["epoch"] == 1
    with pytest.raises(DatasetError, match="must not exist"):
        TorchCheckpointDataset(filepath=filepath, version=Version(None, v1)).save({"epoch": 9})


def test_versioned_through_catalog_config(tmp_path: Path) -> None:
    catalog = DataCatalog.from_config(
        {
            "dqe_checkpoint": {
                "type": "dqe_cir_pipeline.datasets.checkpoint.TorchCheckpointDataset",
                "filepath": str(tmp_path / "ckpt.pt"),
                "versioned": True,
            }
        }
    )
    ckpt, _ = _checkpoint(epoch=4)
    catalog.save("dqe_checkpoint", ckpt)
    assert catalog.exists("dqe_checkpoint")
    assert catalog.load("dqe_checkpoint")["epoch"] == 4
    assert len(list((tmp_path / "ckpt.pt").iterdir())) == 1


def test_failure_mid_save_leaves_previous_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    dataset = TorchCheckpointDataset(filepath=str(path))
    dataset.save({"epoch": 1, "w": torch.arange(4)})
    before = path.read_bytes()

    class Exploding:
        def __reduce__(self) -> tuple:
            raise RuntimeError("disk full (simulated)")

    # torch.save has already written the tensors' records when pickling hits this.
    with pytest.raises(DatasetError, match="disk full"):
        dataset.save({"epoch": 2, "w": torch.arange(1000), "bad": Exploding()})
    assert path.read_bytes() == before
    assert dataset.load()["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp left


def test_weights_only_rejects_arbitrary_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Arbitrary()}, path)  # written behind our back
    with pytest.raises(DatasetError, match="[Ww]eights only load failed"):
        TorchCheckpointDataset(filepath=str(path)).load()
    assert EXECUTED == []


def test_save_refuses_what_would_not_load(tmp_path: Path) -> None:
    dataset = TorchCheckpointDataset(filepath=str(tmp_path / "ckpt.pt"))
    with pytest.raises(DatasetError, match=r"checkpoint\['rng'\]\['numpy'\] \(numpy.ndarray\)"):
        dataset.save({"rng": {"numpy": np.zeros(3)}})
    assert not dataset.exists()
    assert list(tmp_path.iterdir()) == []
    assert EXECUTED == []
    with pytest.raises(DatasetError, match="saves dicts"):
        dataset.save(_model())  # type: ignore[arg-type]


def test_weights_only_cannot_be_disabled(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="weights_only"):
        TorchCheckpointDataset(filepath=str(tmp_path / "x.pt"), load_args={"weights_only": False})


def test_load_trainable_state_restores_matching_model(tmp_path: Path) -> None:
    ckpt, model = _checkpoint()
    target = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    load_trainable_state(
        target, ckpt, "tiny-vit", {"hidden": 8, "qformer": {"num_query_tokens": 4}, "dims": (8, 4)}
    )
    for p, q in zip(model.parameters(), target.parameters(), strict=True):
        assert torch.equal(p, q)


def test_load_trainable_state_names_mismatching_fields() -> None:
    ckpt, _ = _checkpoint()
    model = _model()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(CheckpointMismatchError) as info:
        load_trainable_state(
            model,
            ckpt,
            "blip2-vitg",
            {"hidden": 16, "layers": 2, "qformer": {"num_query_tokens": 32}, "temperature": 0.07},
        )
    message = str(info.value)
    assert "backbone.key: checkpoint has 'tiny-vit', expected 'blip2-vitg'" in message
    assert "config.hidden: checkpoint has 8, expected 16" in message
    assert "config.qformer.num_query_tokens" in message
    assert "config.temperature: missing in checkpoint" in message
    assert "config.layers" not in message
    for p, q in zip(before, model.parameters(), strict=True):
        assert torch.equal(p, q)  # nothing was loaded

    wrong_shape = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )
    with pytest.raises(CheckpointMismatchError, match="does not fit the model"):
        load_trainable_state(wrong_shape, ckpt, "tiny-vit", {"hidden": 8})
