"""The mined negatives dataset: one folder per key, mined only when missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from kedro.io.core import DatasetError

from dqe_cir_pipeline.datasets.mined_negatives import (
    SAMPLE_FILE,
    MinedNegatives,
    MinedNegativesDataset,
    MiningJob,
)


def _job(key: str, runs: list[str], value: float = 1.0) -> MiningJob:
    def run() -> MinedNegatives:
        runs.append(key)
        table = pd.DataFrame({"query_id": ["q0", "q1"], "candidate_ids": [["a", "b"], ["c"]]})
        sample = pd.DataFrame({"query_id": ["q0"], "delta": [-0.5], "in_zone": [True]})
        return MinedNegatives(table, {"zone_size/mean": value, "seconds": 2.0}, sample)

    return MiningJob(key=key, description={"mining": {"epsilon": value}}, run=run)


def test_the_same_key_is_mined_once(tmp_path: Path) -> None:
    runs: list[str] = []
    ds = MinedNegativesDataset(path=str(tmp_path))
    ds.save(_job("k1", runs))
    first = ds.load()
    assert runs == ["k1"] and not first.reused and first.key == "k1"
    ds.save(_job("k1", runs))
    again = ds.load()
    assert runs == ["k1"] and again.reused
    pd.testing.assert_frame_equal(again.table, first.table)
    pd.testing.assert_frame_equal(again.delta_sample, first.delta_sample)
    assert again.summary == first.summary == {"zone_size/mean": 1.0, "seconds": 2.0}


def test_a_new_key_is_mined_and_an_old_one_kept(tmp_path: Path) -> None:
    runs: list[str] = []
    ds = MinedNegativesDataset(path=str(tmp_path))
    ds.save(_job("k1", runs, 1.0))
    ds.save(_job("k2", runs, 2.0))
    assert ds.load().summary["zone_size/mean"] == 2.0
    ds.save(_job("k1", runs, 1.0))  # back to the first settings: still stored
    assert runs == ["k1", "k2"] and ds.load().summary["zone_size/mean"] == 1.0


def test_a_later_process_loads_the_current_negatives(tmp_path: Path) -> None:
    MinedNegativesDataset(path=str(tmp_path)).save(_job("k1", []))
    later = MinedNegativesDataset(path=str(tmp_path))
    assert later.exists()
    loaded = later.load()
    assert loaded.key == "k1" and loaded.reused  # this process mined nothing


def test_a_damaged_folder_is_set_aside_and_mined_again(tmp_path: Path) -> None:
    runs: list[str] = []
    ds = MinedNegativesDataset(path=str(tmp_path))
    ds.save(_job("k1", runs))
    (tmp_path / "k1" / SAMPLE_FILE).write_bytes(b"torn")
    ds.save(_job("k1", runs))
    assert runs == ["k1", "k1"] and not ds.load().reused
    assert any(p.name.startswith("k1.corrupt-") for p in tmp_path.iterdir())


def test_bad_saves_and_loads_are_refused(tmp_path: Path) -> None:
    ds = MinedNegativesDataset(path=str(tmp_path))
    with pytest.raises(DatasetError, match="no mined negatives"):
        ds.load()
    with pytest.raises(DatasetError, match="expected a MiningJob"):
        ds.save(pd.DataFrame())  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match="invalid mining key"):
        ds.save(_job("../escape", []))
