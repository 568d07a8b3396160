"""Gallery index search on hand-made embeddings: exact = brute force, approximate close to
exact with exact scores, bad k refused, rebuilt only when its key changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dqe_cir_pipeline.datasets.serving_artifacts import GalleryIndexDataset
from dqe_cir_pipeline.serving.errors import ServingInputError
from dqe_cir_pipeline.serving.index import GalleryIndex, GalleryIndexJob, IndexSettings, TokenANN


def _clustered(m: int, q: int, p: int, seed: int = 0) -> torch.Tensor:
    """(m, q, p) unit token embeddings around per-image centres drawn from 50 clusters."""
    g = torch.Generator().manual_seed(seed)
    clusters = torch.randn(50, p, generator=g)
    centres = clusters[torch.randint(0, 50, (m,), generator=g)] + 0.7 * torch.randn(
        m, p, generator=g
    )
    tokens = centres[:, None, :] + 0.5 * torch.randn(m, q, p, generator=g)
    return torch.nn.functional.normalize(tokens, dim=-1)


def _index(emb: torch.Tensor, settings: IndexSettings | None = None) -> GalleryIndex:
    m = emb.shape[0]
    table = pd.DataFrame(
        {
            "image_id": [f"img{i}" for i in range(m)],
            "path": [f"/g/img{i}.png" for i in range(m)],
            "content_hash": [f"h{i}" for i in range(m)],
            "category": [""] * m,
        }
    )
    meta = {"format": 1, "key": "k", "model_version": "v", "backbone_key": "b"}
    ann = None
    settings = settings or IndexSettings()
    if m >= settings.approximate_from:
        ann = TokenANN.build(emb.numpy(), settings.ann_encoding, settings.ann_nlist)
    return GalleryIndex(emb, table, meta, ann, settings)


def _brute_force(q: torch.Tensor, emb: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = torch.einsum("np,mqp->nmq", q, emb).amax(-1)
    s, i = torch.topk(scores, k, dim=1)
    return i.numpy(), s.numpy()


def test_exact_search_is_max_over_tokens_and_excludes_the_reference() -> None:
    emb = _clustered(300, 4, 16)
    index = _index(emb)
    q = torch.nn.functional.normalize(emb[:3, 0] + 0.1, dim=-1)
    idx, scores = _brute_force(q, emb, 6)
    out = index.search(q, 5, exclude_hashes=[f"h{idx[0, 0]}", None, None])
    first = out[out["query"] == 0]
    assert first["image_id"].tolist() == [f"img{i}" for i in idx[0, 1:6]]  # best one left out
    np.testing.assert_allclose(first["score"], scores[0, 1:6], rtol=1e-5)
    second = out[out["query"] == 1]
    assert second["rank"].tolist() == [1, 2, 3, 4, 5]
    assert second["image_id"].tolist() == [f"img{i}" for i in idx[1, :5]]


def test_k_larger_than_the_gallery_is_refused_by_name() -> None:
    index = _index(_clustered(20, 2, 8))
    q = torch.nn.functional.normalize(torch.ones(1, 8), dim=-1)
    with pytest.raises(ServingInputError, match=r"k=21 .* 20 images"):
        index.search(q, 21)
    with pytest.raises(ServingInputError, match=r"k=20 .* 19 images .*reference"):
        index.search(q, 20, exclude_hashes=["h3"])


def test_approximate_search_finds_the_exact_top_50_and_scores_them_exactly() -> None:
    emb = _clustered(4000, 4, 16)
    settings = IndexSettings(approximate_from=1000, ann_encoding="SQ8", ann_nprobe=16)
    index = _index(emb, settings)
    assert index.ann is not None
    q = torch.nn.functional.normalize(emb[torch.arange(0, 4000, 200), 1] + 0.05, dim=-1)
    exact_i, _ = _brute_force(q, emb, 50)
    approx = index.search(q, 50)
    recalls = []
    for n in range(q.shape[0]):
        got = approx[approx["query"] == n]
        rows = [int(x[3:]) for x in got["image_id"]]
        recalls.append(len(set(rows) & set(exact_i[n].tolist())) / 50)
        exact_scores = torch.einsum("p,cqp->cq", q[n], emb[rows]).amax(-1).numpy()
        np.testing.assert_allclose(got["score"], exact_scores, rtol=1e-5)  # re-ranked exactly
    assert np.mean(recalls) >= 0.98, recalls
    # exact on request, from the same index
    exact = index.search(q[:1], 50, approximate=False)
    assert [int(x[3:]) for x in exact["image_id"]] == exact_i[0].tolist()


def test_index_folder_round_trips_and_is_rebuilt_only_when_its_key_changes(
    tmp_path: Path,
) -> None:
    settings = IndexSettings(approximate_from=100)
    index = _index(_clustered(150, 2, 8), settings)
    builds: list[str] = []

    def job(key: str) -> GalleryIndexJob:
        def build() -> GalleryIndex:
            builds.append(key)
            index.meta["key"] = key
            return index

        return GalleryIndexJob(key=key, build=build)

    ds = GalleryIndexDataset(path=str(tmp_path / "index"))
    ds.save(job("a"))
    ds.save(job("a"))  # same model, images and settings: kept
    assert builds == ["a"] and ds.last_save == {"key": "a", "rebuilt": False}
    ds.save(job("b"))
    assert builds == ["a", "b"]
    loaded = ds.load()
    assert loaded.key == "b" and loaded.ann is not None
    torch.testing.assert_close(loaded.embeddings, index.embeddings)
    pd.testing.assert_frame_equal(loaded.table, index.table)
    q = torch.nn.functional.normalize(torch.ones(2, 8), dim=-1)
    pd.testing.assert_frame_equal(loaded.search(q, 5), index.search(q, 5))
