"""Kedro datasets for what serving reads: the query model export and the gallery index.

Both are folders written atomically and skipped when unchanged (same weights version,
same index key). ``_filepath`` is the folder: kedro-mlflow's ``pipeline_ml_factory``
logs it with the inference model and points it at the logged copy on load.
"""

from __future__ import annotations

import logging
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from dqe_cir_pipeline.serving.index import (
    GalleryIndex,
    GalleryIndexJob,
    read_index_meta,
)
from dqe_cir_pipeline.serving.query_model import (
    CONFIG_FILE,
    ExportFormatError,
    QueryModel,
    read_export_config,
)

logger = logging.getLogger(__name__)


class QueryModelDataset(AbstractDataset[QueryModel, QueryModel]):
    """A ``save_pretrained`` export folder of the query model, rewritten only for a new version.

    ``device``: where a loaded model runs (``cpu`` | ``cuda`` | ``auto``).
    """

    def __init__(
        self, *, path: str, device: str = "cpu", metadata: dict[str, Any] | None = None
    ) -> None:
        self._filepath = PurePosixPath(path)
        self._device = device
        self.metadata = metadata

    def load(self) -> QueryModel:
        try:
            return QueryModel.from_pretrained(Path(self._filepath), self._device)
        except ExportFormatError as err:
            raise DatasetError(str(err)) from err

    def save(self, data: QueryModel) -> None:
        folder = Path(self._filepath)
        try:
            same = read_export_config(folder).get("version") == data.version
        except (ExportFormatError, OSError, ValueError):
            same = False
        if same:
            logger.info("query model %s already exported in %s", data.version, folder)
            return
        data.save_pretrained(folder)
        logger.info("query model %s exported to %s", data.version, folder)

    def _exists(self) -> bool:
        return (Path(self._filepath) / CONFIG_FILE).is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "device": self._device}


class GalleryIndexDataset(AbstractDataset[GalleryIndex | GalleryIndexJob, GalleryIndex]):
    """A gallery index folder, rebuilt only when its key changes (``last_save`` says which).

    ``save`` takes a ready :class:`GalleryIndex` or a :class:`GalleryIndexJob` built on demand.
    """

    def __init__(self, *, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = PurePosixPath(path)
        self.metadata = metadata
        self.last_save: dict[str, Any] = {}

    def load(self) -> GalleryIndex:
        return GalleryIndex.load(Path(self._filepath))

    def save(self, data: GalleryIndex | GalleryIndexJob) -> None:
        folder = Path(self._filepath)
        current = read_index_meta(folder)
        key = data.key
        if current is not None and current.get("key") == key:
            self.last_save = {"key": key, "rebuilt": False}
            logger.info("gallery index %s is up to date in %s (not rebuilt)", key, folder)
            return
        index = data.build() if isinstance(data, GalleryIndexJob) else data
        index.save(folder)
        self.last_save = {"key": key, "rebuilt": True}
        logger.info("gallery index %s written to %s", key, folder)

    def _exists(self) -> bool:
        return read_index_meta(Path(self._filepath)) is not None

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath)}


__all__ = ["GalleryIndexDataset", "QueryModelDataset"]
