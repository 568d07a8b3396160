"""The ``serving`` parameter block: gallery index, search and model registry settings."""

from __future__ import annotations

from dqe_cir_pipeline.model.config import config_block

#: FAISS encodings the approximate index accepts (the vectors' storage inside FAISS).
ANN_ENCODINGS = ("Flat", "SQ8", "SQ4")


@config_block
class ServingConfig:
    """How the trained model is served (``serving``).

    Attributes:
        gallery_split: split whose images are indexed; null: ``evaluation.split``.
        gallery_folder: index this folder's images (.jpg/.jpeg/.png/.webp/.bmp) instead.
        exclude_reference: drop gallery images with the reference's exact bytes (the
            protocol of CIRR and the generated benchmark).
        approximate_from: galleries this large also get the FAISS index.
        ann_nlist: IVF lists (0: sqrt of the token count).
        ann_candidates: distinct images the FAISS search hands to exact re-ranking.
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
