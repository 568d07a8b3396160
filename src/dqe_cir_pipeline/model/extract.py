"""Frozen-ViT feature extraction: decode -> preprocess -> ViT forward, in batches.

Returns arrays; the feature cache dataset decides what to compute and writes it. Progress
(images/s, ETA) shows as a bar on a terminal, as log lines at intervals otherwise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dqe_cir_pipeline.model.backbone import Backbone, encode_vit
from dqe_cir_pipeline.model.device import autocast
from dqe_cir_pipeline.model.progress import Progress

logger = logging.getLogger(__name__)


class ImageFiles(Dataset):
    """Decode + preprocess image files (runs in DataLoader workers on a GPU machine)."""

    def __init__(
        self, paths: Sequence[str], preprocess: Callable[[Image.Image], torch.Tensor]
    ) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                return self.preprocess(img.convert("RGB"))
        except (OSError, ValueError) as err:
            raise OSError(f"cannot decode image {path}: {err}") from err


class VitEncoder:
    """Callable ``paths -> (n, T, D) float16`` array; halves ``batch_size`` on CUDA OOM.

    A call reports its progress on the ``Progress`` it is given (one spanning many calls),
    else on its own.
    """

    def __init__(
        self,
        backbone: Backbone,
        device: torch.device,
        batch_size: int = 64,
        num_workers: int = 0,
        amp_dtype: str | None = "bfloat16",
    ) -> None:
        self.model = backbone.model
        self.model.vision_model.to(device).eval()
        self.preprocess = backbone.preprocessor
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.amp_dtype = amp_dtype
        self.images_done = 0
        self.seconds = 0.0

    def __call__(self, paths: Sequence[str], progress: Progress | None = None) -> np.ndarray:
        """ViT tokens of ``paths``, counted on ``progress`` (default: a progress of this call)."""
        start = time.perf_counter()
        while True:
            own = progress or Progress(
                len(paths), desc="extract shard", unit="image", logger=logger
            )
            counted = own.n
            try:
                out = self._run(paths, own)
                break
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                torch.cuda.empty_cache()
                logger.warning(
                    "CUDA out of memory: extraction batch size halved to %d", self.batch_size
                )
                own.update(counted - own.n)  # the retry counts these images again
            finally:
                if progress is None:
                    own.close()
        self.images_done += len(paths)
        self.seconds += time.perf_counter() - start
        return out

    def _run(self, paths: Sequence[str], progress: Progress) -> np.ndarray:
        loader = DataLoader(
            ImageFiles(paths, self.preprocess),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        chunks = []
        for pixels in loader:
            with autocast(self.device, self.amp_dtype):
                tokens = encode_vit(self.model, pixels.to(self.device, non_blocking=True))
            chunks.append(tokens.to(torch.float16).cpu().numpy())
            progress.update(len(pixels))
        return np.concatenate(chunks)


class MemoryFeatures:
    """A ``FeatureSource`` held in RAM: for small benchmarks and scripts without Kedro."""

    def __init__(self, ids: Sequence[str], tokens: np.ndarray) -> None:
        if len(ids) != len(tokens):
            raise ValueError(f"{len(ids)} ids for {len(tokens)} feature rows")
        self._row = {image_id: i for i, image_id in enumerate(ids)}
        self._tokens = tokens

    def get(self, ids: Sequence[str]) -> np.ndarray:
        """(n, T, D) tokens in the order of ``ids``."""
        try:
            rows = [self._row[i] for i in ids]
        except KeyError as err:
            raise KeyError(f"no cached features for image {err.args[0]!r}") from None
        return self._tokens[rows]


def extract_to_memory(
    encoder: VitEncoder, ids: Sequence[str], paths: Sequence[str], shard: int = 1024
) -> MemoryFeatures:
    """Encode every image into a ``MemoryFeatures`` (fp16), ``shard`` images per call."""
    with Progress(len(paths), desc="extract", unit="image", logger=logger) as progress:
        chunks = [
            encoder(list(paths[i : i + shard]), progress) for i in range(0, len(paths), shard)
        ]
    return MemoryFeatures(ids, np.concatenate(chunks))
