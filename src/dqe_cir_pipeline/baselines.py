"""Baselines every result is reported beside.

The text-blind baseline ranks the gallery by pixel similarity to the reference image and
ignores the modification text: a model that does not beat it has not learned to use the
text. (The untrained model, the other floor, is the DQE-CIR module before training.)
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from dqe_cir_pipeline.data_sources.synthetic import pixel_embeddings
from dqe_cir_pipeline.model.evaluate import EvalOutput, EvalSet, evaluate_embeddings


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
