"""Where ingestion keeps the record of the image files it found good (a Parquet table).

``load`` gives the ingestion node a handle (``data_sources.image_check.CheckRecordFile``)
that it reads before the image check and rewrites after it. The record is an input only:
a dataset both read and written by one pipeline would be a cycle Kedro refuses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from dqe_cir_pipeline.data_sources.image_check import CheckRecordFile


class ImageCheckRecordDataset(AbstractDataset[None, CheckRecordFile]):
    """The image check record of a benchmark, handed to the node that checks its images.

    Example catalog entry::

        image_check_record:
          type: dqe_cir_pipeline.datasets.image_check_record.ImageCheckRecordDataset
          filepath: data/synthetic/02_intermediate/image_check_record.parquet
    """

    def __init__(self, *, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return True  # an absent record is an empty one: every file is checked

    def load(self) -> CheckRecordFile:
        return CheckRecordFile(self._filepath)

    def save(self, data: None) -> None:
        raise DatasetError(
            f"{self._filepath}: the image check record is written through the handle "
            "its load returns, not saved as a node output"
        )
