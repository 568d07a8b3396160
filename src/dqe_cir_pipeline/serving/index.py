"""A gallery index: the trained model's target embeddings of a gallery, searchable.

It records what built it (model version, backbone, image fingerprint). Search is exact
(chunked, scored as evaluation scores); large galleries add a FAISS token index that
pre-selects candidates for exact re-ranking. Folder layout: docs/serving.md.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.io_utils import stable_hash
from dqe_cir_pipeline.model.data import FeatureSource
from dqe_cir_pipeline.model.retrieval import topk
from dqe_cir_pipeline.serving.config import ServingConfig
from dqe_cir_pipeline.serving.errors import ServingInputError, StaleIndexError
from dqe_cir_pipeline.serving.folders import write_folder
from dqe_cir_pipeline.serving.images import file_hash, load_image_file, scan_folder
from dqe_cir_pipeline.serving.query_model import QueryModel

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
META_FILE = "meta.json"
TABLE_FILE = "images.parquet"
EMBEDDINGS_FILE = "embeddings.npy"
ANN_FILE = "ann.faiss"
TABLE_COLUMNS = ("image_id", "path", "content_hash", "category")


_DEFAULTS = ServingConfig()


@dataclass(frozen=True)
class IndexSettings:
    """What decides how an index is built and searched (defaults: :class:`ServingConfig`'s)."""

    approximate_from: int = _DEFAULTS.approximate_from
    ann_encoding: str = _DEFAULTS.ann_encoding
    ann_nlist: int = _DEFAULTS.ann_nlist
    ann_nprobe: int = _DEFAULTS.ann_nprobe
    ann_candidates: int = _DEFAULTS.ann_candidates
    chunk_size: int = _DEFAULTS.chunk_size

    @classmethod
    def from_config(cls, cfg: ServingConfig) -> IndexSettings:
        return cls(
            approximate_from=cfg.approximate_from,
            ann_encoding=cfg.ann_encoding,
            ann_nlist=cfg.ann_nlist,
            ann_nprobe=cfg.ann_nprobe,
            ann_candidates=cfg.ann_candidates,
            chunk_size=cfg.chunk_size,
        )

    def build_settings(self, size: int) -> dict[str, Any]:
        """The settings that change the stored index (part of its key)."""
        if size < self.approximate_from:
            return {"approximate": False}
        return {"approximate": True, "encoding": self.ann_encoding, "nlist": self.ann_nlist}


def gallery_fingerprint(table: pd.DataFrame) -> str:
    """Hash of the gallery's (image id, content hash, category) rows, order-independent."""
    rows = sorted(zip(table["image_id"], table["content_hash"], table["category"], strict=True))
    return stable_hash([list(r) for r in rows])


def index_key(model: QueryModel, table: pd.DataFrame, settings: IndexSettings) -> str:
    """The key of the index ``model`` would build for ``table``: equal keys, equal index."""
    return stable_hash(
        {
            "format": INDEX_FORMAT,
            "model_version": model.version,
            "backbone": model.backbone_key,
            "gallery": gallery_fingerprint(table),
            "build": settings.build_settings(len(table)),
        }
    )


class TokenANN:
    """FAISS IVF index over every gallery token (inner product); token ``m * Q + j`` is image m's.

    An image's max-over-tokens score is its best token's, so the owners of the best tokens
    found are the candidates.
    """

    def __init__(self, index: Any, tokens_per_image: int) -> None:
        self.index = index
        self.tokens_per_image = int(tokens_per_image)

    @classmethod
    def build(cls, embeddings: np.ndarray, encoding: str, nlist: int, seed: int = 0) -> TokenANN:
        """Train and fill an ``IVF<nlist>,<encoding>`` index on ``(M, Q, P)`` embeddings."""
        import faiss

        m, q, p = embeddings.shape
        tokens = np.ascontiguousarray(embeddings.reshape(m * q, p), dtype=np.float32)
        lists = nlist or max(1, int(math.sqrt(len(tokens))))
        index = faiss.index_factory(p, f"IVF{lists},{encoding}", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = min(len(tokens), lists * 64)
        index.train(tokens[rng.choice(len(tokens), sample, replace=False)])
        index.add(tokens)
        return cls(index, q)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def candidates(self, queries: np.ndarray, n_images: int, nprobe: int) -> list[np.ndarray]:
        """Up to ``n_images`` distinct image rows per query, by their best token found."""
        import faiss

        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = min(nprobe, ivf.nlist)
        n_tokens = min(self.index.ntotal, n_images * 4)
        _, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n_tokens)
        out = []
        for row in ids:
            images = row[row >= 0] // self.tokens_per_image
            _, first = np.unique(images, return_index=True)
            out.append(images[np.sort(first)][:n_images])
        return out

    def save(self, path: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(path))

    @classmethod
    def load(cls, path: Path, tokens_per_image: int) -> TokenANN:
        import faiss

        return cls(faiss.read_index(str(path)), tokens_per_image)


@dataclass
class GalleryIndex:
    """A gallery's embeddings, metadata and search.

    ``embeddings``: (M, Q, P) float32, row i = ``table`` row i (image_id, path, content_hash,
    category); ``ann``: the approximate index or None. Immutable: ``deepcopy`` returns it
    (Kedro and kedro-mlflow deep-copy in-memory data on every prediction).
    """

    embeddings: torch.Tensor
    table: pd.DataFrame
    meta: dict[str, Any]
    ann: TokenANN | None = None
    settings: IndexSettings = field(default_factory=IndexSettings)

    def __deepcopy__(self, memo: dict[int, Any]) -> GalleryIndex:
        return self

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    def __repr__(self) -> str:
        return (
            f"GalleryIndex(images={len(self)}, model_version={self.model_version!r}, "
            f"approximate={self.ann is not None})"
        )

    @property
    def model_version(self) -> str:
        return str(self.meta["model_version"])

    @property
    def backbone_key(self) -> str:
        return str(self.meta["backbone_key"])

    @property
    def key(self) -> str:
        return str(self.meta["key"])

    @classmethod
    def build(
        cls,
        model: QueryModel,
        table: pd.DataFrame,
        features: FeatureSource | None = None,
        settings: IndexSettings | None = None,
        batch_size: int = 64,
        source: str = "",
    ) -> GalleryIndex:
        """Embed a gallery (table: image_id, path, content_hash, category) with ``model``.

        ``features``: the images' cached ViT tokens; None decodes the files and runs the ViT
        here, ``batch_size`` images at a time. ``source`` is recorded in the metadata.
        """
        settings = settings or IndexSettings()
        start = time.perf_counter()
        table = gallery_table(table)
        ids = table["image_id"].tolist()
        if features is not None:
            emb = model.encode_gallery(features, ids)
        else:
            chunks = []
            for begin in range(0, len(table), batch_size):
                paths = table["path"].iloc[begin : begin + batch_size]
                chunks.append(
                    model.encode_gallery_images([load_image_file(p).image for p in paths])
                )
            emb = torch.cat(chunks)
        build = settings.build_settings(len(table))
        ann = None
        if build["approximate"]:
            ann = TokenANN.build(emb.numpy(), settings.ann_encoding, settings.ann_nlist)
            build["nlist"] = ann.nlist
        meta = {
            "format": INDEX_FORMAT,
            "key": index_key(model, table, settings),
            "model_version": model.version,
            "backbone_key": model.backbone_key,
            "backbone_name": model.backbone_name,
            "fingerprint": gallery_fingerprint(table),
            "images": len(table),
            "tokens": int(emb.shape[1]),
            "dim": int(emb.shape[2]),
            "build": build,
            "source": source,
            "built_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "build_seconds": round(time.perf_counter() - start, 3),
        }
        logger.info(
            "gallery index: %d images embedded by model %s in %.1f s%s",
            len(table),
            model.version,
            meta["build_seconds"],
            f" (+ FAISS IVF{ann.nlist},{settings.ann_encoding})" if ann else "",
        )
        return cls(emb.contiguous(), table, meta, ann, settings)

    @classmethod
    def build_from_folder(
        cls,
        model: QueryModel,
        folder: str | Path,
        settings: IndexSettings | None = None,
        batch_size: int = 64,
    ) -> GalleryIndex:
        """Index every image below ``folder``; image ids are paths relative to it."""
        return cls.build(
            model,
            folder_table(folder),
            None,
            settings,
            batch_size,
            source=str(Path(folder).resolve()),
        )

    def save(self, folder: str | Path) -> Path:
        """Write the index folder atomically."""

        def write(tmp: Path) -> None:
            np.save(tmp / EMBEDDINGS_FILE, self.embeddings.numpy(), allow_pickle=False)
            self.table.to_parquet(tmp / TABLE_FILE, index=False)
            if self.ann is not None:
                self.ann.save(tmp / ANN_FILE)
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

        return write_folder(folder, write)

    @classmethod
    def load(cls, folder: str | Path, settings: IndexSettings | None = None) -> GalleryIndex:
        """Read an index folder; ServingInputError when it is not an index of this format."""
        root = Path(folder)
        meta = read_index_meta(root)
        if meta is None:
            raise ServingInputError(f"{root}: not a gallery index (no {META_FILE})")
        if meta.get("format") != INDEX_FORMAT:
            raise ServingInputError(
                f"{root / META_FILE}: index format {meta.get('format')!r}, this code reads "
                f"{INDEX_FORMAT}; rebuild the index"
            )
        emb = torch.from_numpy(np.load(root / EMBEDDINGS_FILE, allow_pickle=False))
        table = pd.read_parquet(root / TABLE_FILE)
        if len(table) != emb.shape[0]:
            raise ServingInputError(
                f"{root}: {len(table)} images in {TABLE_FILE}, {emb.shape[0]} embeddings"
            )
        ann = TokenANN.load(root / ANN_FILE, emb.shape[1]) if (root / ANN_FILE).exists() else None
        return cls(emb, table, meta, ann, settings or IndexSettings())

    def check_model(self, model: QueryModel, where: str = "gallery index") -> None:
        """Refuse an index another model embedded: StaleIndexError (other backbone or version)."""
        if self.backbone_key != model.backbone_key:
            raise StaleIndexError(
                f"{where} was built on backbone {self.backbone_key!r} "
                f"({self.meta.get('backbone_name')}), the query model's backbone is "
                f"{model.backbone_key!r} ({model.backbone_name}): rebuild the index"
            )
        if self.model_version != model.version:
            raise StaleIndexError(
                f"{where} was built by model version {self.model_version}, the query model "
                f"is version {model.version}: rebuild the index with this model "
                "(kedro run --pipelines=serving, or --gallery <image folder>)"
            )

    def excluded(self, content_hash: str | None) -> np.ndarray:
        """Rows holding exactly the bytes ``content_hash`` (the reference itself)."""
        if content_hash is None:
            return np.empty(0, dtype=np.int64)
        return np.flatnonzero(self.table["content_hash"].to_numpy() == content_hash)

    def search(
        self,
        queries: torch.Tensor,
        k: Sequence[int] | int,
        exclude_hashes: Sequence[str | None] | None = None,
        approximate: bool | None = None,
    ) -> pd.DataFrame:
        """Top-``k`` gallery images for (N, P) queries (one ``k``, or one per query).

        ``exclude_hashes``: per query, the content hash to leave out (the reference) or None;
        ``approximate`` defaults to using the FAISS index when there is one. One row per result:
        query, rank (1 = best), image_id, path, category, score. ServingInputError for a bad ``k``.
        """
        n = int(queries.shape[0])
        ks = [int(k)] * n if isinstance(k, int) else [int(v) for v in k]
        hashes = list(exclude_hashes) if exclude_hashes is not None else [None] * n
        if len(ks) != n or len(hashes) != n:
            raise ValueError(f"{n} queries, {len(ks)} k values, {len(hashes)} exclusions")
        excluded = [self.excluded(h) for h in hashes]
        for i, (kk, ex) in enumerate(zip(ks, excluded, strict=True)):
            available = len(self) - len(ex)
            if not 1 <= kk <= available:
                extra = f" ({len(ex)} excluded: the reference)" if len(ex) else ""
                raise ServingInputError(
                    f"query {i}: k={kk} must be between 1 and the gallery's {available} "
                    f"images{extra}"
                )
        use_ann = self.ann is not None if approximate is None else approximate
        if use_ann and self.ann is None:
            raise ServingInputError("approximate search asked for, but this index has none")
        rows = self._search_ann(queries, ks, excluded) if use_ann else None
        if rows is None:
            rows = self._search_exact(queries, ks, excluded)
        return self._results(rows)

    def rank_of(
        self, query: torch.Tensor, image_id: str, exclude_hash: str | None = None
    ) -> int | None:
        """Exact rank (1 = best) of ``image_id`` for one (P,) query, as exact search ranks it.

        None when the image is not in this gallery or is excluded by ``exclude_hash``.
        """
        rows = np.flatnonzero(self.table["image_id"].to_numpy() == image_id)
        excluded = self.excluded(exclude_hash)
        rows = rows[~np.isin(rows, excluded)]
        if len(rows) == 0:
            return None
        scores = torch.einsum("p,mqp->mq", query.float(), self.embeddings.float()).amax(dim=-1)
        keep = torch.ones(len(self), dtype=torch.bool)
        keep[torch.from_numpy(excluded)] = False
        target = scores[int(rows[0])]
        return int(((scores > target) & keep).sum()) + 1

    def _search_exact(
        self, queries: torch.Tensor, ks: list[int], excluded: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact max-over-tokens top-k over the whole gallery (chunked)."""
        widest = max(k + len(ex) for k, ex in zip(ks, excluded, strict=True))
        scores, idx = topk(
            queries.float(), self.embeddings, min(widest, len(self)), None, self.settings.chunk_size
        )
        out = []
        for i, (kk, ex) in enumerate(zip(ks, excluded, strict=True)):
            keep = ~np.isin(idx[i].numpy(), ex)
            out.append((idx[i].numpy()[keep][:kk], scores[i].numpy()[keep][:kk]))
        return out

    def _search_ann(
        self, queries: torch.Tensor, ks: list[int], excluded: list[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """Approximate candidates, re-ranked exactly; ``None`` when too few were found."""
        assert self.ann is not None
        q = queries.float()
        wanted = max(self.settings.ann_candidates, max(ks) + max(len(e) for e in excluded))
        cands = self.ann.candidates(q.numpy(), wanted, self.settings.ann_nprobe)
        out = []
        for i, (kk, ex) in enumerate(zip(ks, excluded, strict=True)):
            rows = cands[i][~np.isin(cands[i], ex)]
            if len(rows) < kk:
                return None  # the exact search answers instead
            member = self.embeddings[torch.from_numpy(rows)]  # (C, Q, P)
            scores = torch.einsum("p,cqp->cq", q[i], member).amax(dim=-1)
            top_s, top_i = torch.topk(scores, kk)
            out.append((rows[top_i.numpy()], top_s.numpy()))
        return out

    def _results(self, rows: list[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
        frames = []
        for i, (idx, scores) in enumerate(rows):
            part = self.table.iloc[idx][["image_id", "path", "category"]].reset_index(drop=True)
            part.insert(0, "rank", np.arange(1, len(idx) + 1, dtype=np.int64))
            part.insert(0, "query", np.int64(i))
            part["score"] = scores.astype(np.float64)
            frames.append(part)
        return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class GalleryIndexJob:
    """A gallery index to build, keyed by what it depends on; built only when the key changed.

    :class:`~dqe_cir_pipeline.datasets.serving_artifacts.GalleryIndexDataset` decides;
    ``deepcopy`` returns the job itself (it holds a live model).
    """

    key: str
    build: Callable[[], GalleryIndex]
    description: dict[str, Any] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> GalleryIndexJob:
        return self


def read_index_meta(root: Path) -> dict[str, Any] | None:
    """An index folder's ``meta.json``, or ``None`` when there is none (or it is torn)."""
    try:
        return json.loads((root / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def folder_table(folder: str | Path) -> pd.DataFrame:
    """The gallery table of an image folder: ids relative to it, category ``""``."""
    root = Path(folder)
    paths = scan_folder(root)
    return pd.DataFrame(
        {
            "image_id": [p.relative_to(root).as_posix() for p in paths],
            "path": [str(p.resolve()) for p in paths],
            "content_hash": [file_hash(p) for p in paths],
            "category": [""] * len(paths),
        }
    )


def gallery_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` reduced to the index columns as strings, checked: not empty, ids unique."""
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"gallery table lacks columns {missing}")
    if table.empty:
        raise ServingInputError("the gallery is empty")
    dup = table["image_id"][table["image_id"].duplicated()]
    if len(dup):
        raise ServingInputError(f"gallery image id {dup.iloc[0]!r} appears more than once")
    out = table[list(TABLE_COLUMNS)].reset_index(drop=True).copy()
    for col in TABLE_COLUMNS:
        out[col] = out[col].astype(str)
    return out


def settings_dict(settings: IndexSettings) -> dict[str, Any]:
    """Plain-data view of the settings (for logs and MLflow)."""
    return asdict(settings)
