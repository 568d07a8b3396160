"""Using the trained model: gallery index, query model export, search.

* :class:`QueryModel` — the trained query side (frozen ViT + DQE-CIR + tokenizer), built
  from a checkpoint or a ``save_pretrained`` export folder.
* :class:`GalleryIndex` — a gallery's target embeddings, versioned with the model that
  embedded them; exact search, FAISS-approximate with exact re-ranking for large ones.
* :class:`Searcher` / :func:`search` — reference image + text -> ranked gallery images.

See ``docs/serving.md``.
"""

from dqe_cir_pipeline.serving.config import ServingConfig
from dqe_cir_pipeline.serving.errors import ServingInputError, StaleIndexError
from dqe_cir_pipeline.serving.index import GalleryIndex, IndexSettings
from dqe_cir_pipeline.serving.query_model import ExportFormatError, QueryModel
from dqe_cir_pipeline.serving.resolve import open_searcher, search
from dqe_cir_pipeline.serving.searcher import Searcher

__all__ = [
    "ExportFormatError",
    "GalleryIndex",
    "IndexSettings",
    "QueryModel",
    "Searcher",
    "ServingConfig",
    "ServingInputError",
    "StaleIndexError",
    "open_searcher",
    "search",
]
