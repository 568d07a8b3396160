"""A folder of pretrained BLIP-2 backbones, one per configuration, trained only when missing.

Each is a ``save_pretrained`` folder plus ``pretraining.json`` (settings, history) that
``backbone.source: pretrained`` loads like a downloaded ``Salesforce/blip2-itm-vit-g``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from dqe_cir_pipeline.io_utils import atomic_write_json

logger = logging.getLogger(__name__)

INFO_FILE = "pretraining.json"
CURRENT_FILE = "current.json"
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class TrainedBackbone:
    """What a pretraining job returns: model and tokenizer (``save_pretrained``), JSON record."""

    model: Any
    tokenizer: Any
    record: dict[str, Any]


@dataclass(frozen=True)
class PretrainingJob:
    """A pretraining to run unless its result already exists.

    ``key``: the result's folder name (letters, digits, ``.``, ``_``, ``-``), derived from
    the JSON-ready ``description``; ``run`` trains and returns the backbone.
    """

    key: str
    description: dict[str, Any]
    run: Callable[[], TrainedBackbone]

    def __deepcopy__(self, memo: dict[int, Any]) -> PretrainingJob:
        return self  # holds a closure over live objects; Kedro must not copy it


class PretrainedBackboneDataset(AbstractDataset[PretrainingJob, dict[str, Any]]):
    """Pretrained backbones under ``path``, keyed by configuration.

    ``save(job)`` writes ``path/<job.key>/`` atomically unless it exists, then marks it
    current; ``load()`` returns the current backbone's ``pretraining.json`` plus ``path``.

    Example catalog entry::

        pretrained_backbone:
          type: dqe_cir_pipeline.datasets.pretrained_backbone.PretrainedBackboneDataset
          path: data/synthetic/06_models/pretrained_backbone

    Security: loading reads JSON only; the weights are safetensors (no pickled code).
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._root = Path(path)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._root)}

    def _exists(self) -> bool:
        return (self._root / CURRENT_FILE).is_file()

    def load(self) -> dict[str, Any]:
        current = self._root / CURRENT_FILE
        if not current.is_file():
            raise DatasetError(
                f"no pretrained backbone in {self._root}: run `kedro run --pipelines=pretraining`"
            )
        key = json.loads(current.read_text())["key"]
        return self._info(self._root / key)

    def save(self, data: PretrainingJob) -> None:
        if not isinstance(data, PretrainingJob):
            raise DatasetError(f"expected a PretrainingJob, got {type(data).__name__}")
        if not _KEY_RE.match(data.key):
            raise DatasetError(f"invalid backbone key {data.key!r}")
        out = self._root / data.key
        if (out / INFO_FILE).is_file():
            logger.info("pretrained backbone %s exists: reused, nothing trained", out)
        else:
            self._write(out, data)
        atomic_write_json(self._root / CURRENT_FILE, {"key": data.key})

    def _write(self, out: Path, job: PretrainingJob) -> None:
        trained = job.run()
        self._root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{job.key}.tmp-", dir=self._root))
        try:
            trained.model.save_pretrained(str(tmp))
            trained.tokenizer.save_pretrained(str(tmp))
            info = {"key": job.key, "description": job.description, **trained.record}
            atomic_write_json(tmp / INFO_FILE, info)
            if out.exists():  # an unfinished folder (no info file) from a killed run
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        logger.info("pretrained backbone written to %s", out)

    @staticmethod
    def _info(folder: Path) -> dict[str, Any]:
        path = folder / INFO_FILE
        try:
            info = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"cannot read {path}: {err}") from err
        return {**info, "path": str(folder)}
