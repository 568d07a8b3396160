"""Baselines every result is reported beside.

The text-blind baseline ranks the gallery by pixel similarity to the reference image and
ignores the modification text: a model that does not beat it has not learned to use the
text. (The untrained model, the other floor, is the DQE-CIR module before training.)
It is ranked by the evaluation's own protocol (:func:`evaluate_embeddings`, pessimistic
ties), so its numbers are comparable with every model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from dqe_cir_pipeline.model.evaluate import EvalOutput, EvalSet, evaluate_embeddings


def pixel_embeddings(paths: Sequence[str | Path], size: int = 16) -> np.ndarray:
    """Embed images as their box-downsampled pixels, L2-normalised.

    Args:
        paths: Image files (any mode; converted to RGB).
        size: Side of the downsampled image.

    Returns:
        float32 array of shape (N, 3 * size * size), rows of unit L2 norm.
    """
    out = np.empty((len(paths), 3 * size * size), dtype=np.float32)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            small = img.convert("RGB").resize((size, size), Image.Resampling.BOX)
        out[i] = np.asarray(small, dtype=np.float32).reshape(-1) / 255.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def text_blind_baseline(images: pd.DataFrame, data: EvalSet, ks: Sequence[int]) -> EvalOutput:
    """Rank ``data``'s gallery by the pixel similarity of each image to the reference."""
    paths = images.drop_duplicates("image_id").set_index("image_id")["path"]
    gallery = torch.from_numpy(pixel_embeddings([paths[i] for i in data.gallery_ids]))
    pos = {n: i for i, n in enumerate(data.gallery_ids)}
    if all(r in pos for r in data.reference_ids):
        queries = gallery[[pos[r] for r in data.reference_ids]]
    else:  # FashionIQ: a reference may live outside its category's gallery
        queries = torch.from_numpy(pixel_embeddings([paths[r] for r in data.reference_ids]))
    return evaluate_embeddings(queries, None, gallery.unsqueeze(1), data, ks=tuple(ks))
