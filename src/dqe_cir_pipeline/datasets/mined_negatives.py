"""Initial negatives, one folder per key of what they depend on; mined only when missing.

The negative_mining node returns a :class:`MiningJob` (the key, what it was derived
from, how to mine); ``save`` keeps ``<path>/<key>/`` when it exists and runs the job
otherwise, as the pretrained backbones do. ``load`` returns the negatives with the
summary and Delta sample saved beside them, so a re-run reports what it reused.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from kedro.io.core import AbstractDataset, DatasetError

from dqe_cir_pipeline.io_utils import atomic_write_json, set_aside

logger = logging.getLogger(__name__)

TABLE_FILE = "negatives.parquet"
SAMPLE_FILE = "delta_sample.parquet"
#: Written last: a key folder holding it is complete (the folder is renamed into place).
INFO_FILE = "mining.json"
CURRENT_FILE = "current.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class MinedNegatives:
    """Negatives of the training queries and what mining them reported.

    Attributes:
        table: One row per training query (``MiningResult.to_table``).
        summary: Flat statistics (MLflow metrics of the mining pass).
        delta_sample: ``query_id, delta, in_zone`` of a few queries (the plot).
        key: The key they are stored under.
        reused: Found stored: this run mined nothing.
    """

    table: pd.DataFrame
    summary: dict[str, float]
    delta_sample: pd.DataFrame
    key: str = ""
    reused: bool = False


@dataclass(frozen=True)
class MiningJob:
    """A mining pass to run unless its result is stored.

    ``key``: the result's folder name (letters, digits, ``.``, ``_``, ``-``), derived
    from the JSON-ready ``description`` of everything the result depends on; ``run``
    mines and returns the negatives.
    """

    key: str
    description: dict[str, Any]
    run: Callable[[], MinedNegatives]

    def __deepcopy__(self, memo: dict[int, Any]) -> MiningJob:
        return self  # holds a closure over live objects; Kedro must not copy it


class MinedNegativesDataset(AbstractDataset[MiningJob, MinedNegatives]):
    """Mined negatives under ``path``, keyed by what they depend on.

    ``save(job)`` writes ``path/<job.key>/`` (table, Delta sample, ``mining.json`` with
    the description and summary) atomically unless it exists, then marks it current;
    ``load()`` returns the negatives this process saved, else the current ones.

    Example catalog entry::

        mined_negatives:
          type: dqe_cir_pipeline.datasets.mined_negatives.MinedNegativesDataset
          path: data/synthetic/05_model_input/mined_negatives

    Security: loading reads Parquet and JSON only.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._root = Path(path)
        self.metadata = metadata
        self._saved: tuple[str, bool] | None = None  # (key, reused) of this process's save

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._root)}

    def _exists(self) -> bool:
        return (self._root / CURRENT_FILE).is_file()

    def save(self, data: MiningJob) -> None:
        if not isinstance(data, MiningJob):
            raise DatasetError(f"expected a MiningJob, got {type(data).__name__}")
        if not _KEY_RE.match(data.key):
            raise DatasetError(f"invalid mining key {data.key!r}")
        out = self._root / data.key
        reused = _complete(out)
        if reused:
            logger.info("initial negatives %s exist for these inputs: reused, nothing mined", out)
        else:
            self._write(out, data)
        atomic_write_json(self._root / CURRENT_FILE, {"key": data.key})
        self._saved = (data.key, reused)

    def load(self) -> MinedNegatives:
        if self._saved is not None:
            key, reused = self._saved
        else:  # saved by an earlier run: nothing is mined by this one
            current = self._root / CURRENT_FILE
            if not current.is_file():
                raise DatasetError(
                    f"no mined negatives in {self._root}: "
                    "run `kedro run --pipelines=negative_mining`"
                )
            key, reused = json.loads(current.read_text())["key"], True
        folder = self._root / key
        try:
            info = json.loads((folder / INFO_FILE).read_text())
            table = pd.read_parquet(folder / TABLE_FILE)
            sample = pd.read_parquet(folder / SAMPLE_FILE)
        except (OSError, ValueError) as err:
            raise DatasetError(f"cannot read the mined negatives in {folder}: {err}") from err
        return MinedNegatives(table, info["summary"], sample, key=key, reused=reused)

    def _write(self, out: Path, job: MiningJob) -> None:
        mined = replace(job.run(), key=job.key, reused=False)
        self._root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{job.key}.tmp-", dir=self._root))
        try:
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide the result from other readers
            mined.table.to_parquet(tmp / TABLE_FILE, index=False)
            mined.delta_sample.to_parquet(tmp / SAMPLE_FILE, index=False)
            info = {"key": job.key, "description": job.description, "summary": mined.summary}
            atomic_write_json(tmp / INFO_FILE, info)
            if out.exists():  # damaged or unfinished: kept aside for inspection
                aside = set_aside(out)
                logger.warning("mined negatives %s unreadable: set aside as %s", out, aside)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("initial negatives written to %s", out)


def _complete(folder: Path) -> bool:
    """``folder`` holds a readable result: its info file and both Parquet footers."""
    try:
        json.loads((folder / INFO_FILE).read_text())["summary"]
        for name in (TABLE_FILE, SAMPLE_FILE):
            pq.read_metadata(folder / name)
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True
