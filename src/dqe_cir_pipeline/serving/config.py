"""The ``serving`` parameter block: gallery index, search and model registry settings."""

from __future__ import annotations

from dqe_cir_pipeline.model.config import config_block

#: FAISS encodings the approximate index accepts (the vectors' storage inside FAISS).
ANN_ENCODINGS = ("Flat", "SQ8", "SQ4")


@config_block
class ServingConfig:
    """How the trained model is served (``serving`` in ``conf/base/parameters_serving.yml``).

    Attributes:
        gallery_split: the benchmark split whose images the gallery index holds;
            ``null``: the evaluation's reported split (``evaluation.split``: test on the
            generated benchmark, val on FashionIQ and CIRR).
        gallery_folder: a folder of images to index instead of the benchmark split
            (``null``: the split); every ``.jpg/.jpeg/.png/.webp/.bmp`` below it.
        top_k: results returned when a query does not say.
        chunk_size: queries scored per chunk by exact search (bounds memory).
        batch_size: images encoded per batch when building an index or answering a batch.
        exclude_reference: drop gallery images with the reference's exact bytes (the
            evaluation protocol of CIRR and the generated benchmark).
        approximate_from: galleries of at least this many images also get an approximate
            FAISS index; smaller ones are searched exactly only.
        ann_encoding: FAISS storage of the token vectors (``Flat`` | ``SQ8`` | ``SQ4``).
        ann_nlist: inverted lists of the IVF index (``0``: ``4 * sqrt(tokens)``).
        ann_nprobe: lists visited per query.
        ann_candidates: distinct images the approximate search hands to exact re-ranking.
        registered_model_name: the MLflow Model Registry name of the inference model.
    """

    gallery_split: str | None = None
    gallery_folder: str | None = None
    top_k: int = 10
    chunk_size: int = 1024
    batch_size: int = 64
    exclude_reference: bool = True
    approximate_from: int = 50000
    ann_encoding: str = "SQ8"
    ann_nlist: int = 0
    ann_nprobe: int = 64
    ann_candidates: int = 256
    registered_model_name: str = "dqe_cir_synthetic"

    def __post_init__(self) -> None:
        if self.ann_encoding not in ANN_ENCODINGS:
            raise ValueError(
                f"serving.ann_encoding must be one of {ANN_ENCODINGS}, got {self.ann_encoding!r}"
            )
        for name in ("top_k", "chunk_size", "batch_size", "ann_nprobe", "ann_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"serving.{name} must be >= 1, got {getattr(self, name)}")
        if self.ann_nlist < 0 or self.approximate_from < 1:
            raise ValueError("serving.ann_nlist must be >= 0 and approximate_from >= 1")
