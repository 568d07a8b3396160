"""Under ``torchrun``, rank 0 is the run: it alone writes datasets and talks to MLflow.

``torchrun --nproc_per_node=N -m kedro run --pipelines training`` runs the whole Kedro
session in every rank. The other ranks load inputs as usual and keep their outputs in
memory (:class:`RankLocalDataset`); ``settings.py`` does not even register kedro-mlflow's
hooks on them.
"""

from __future__ import annotations

import logging
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import AbstractDataset, DataCatalog
from kedro.pipeline import Pipeline

from dqe_cir_pipeline.launch import launch_rank

logger = logging.getLogger(__name__)


class RankLocalDataset(AbstractDataset[Any, Any]):
    """A catalog entry as a rank other than 0 sees it: loads as usual, saves to memory.

    Args:
        inner: the configured dataset (read from when nothing was saved in this run).
        name: the catalog name (for messages).
        rank: this process's rank.
    """

    def __init__(self, inner: AbstractDataset[Any, Any], name: str, rank: int) -> None:
        self._inner = inner
        self._name = name
        self._rank = rank
        self._saved = False
        self._data: Any = None

    def load(self) -> Any:
        return self._data if self._saved else self._inner.load()

    def save(self, data: Any) -> None:
        logger.debug("rank %d: keeping %s in memory (rank 0 writes it)", self._rank, self._name)
        self._data, self._saved = data, True

    def _exists(self) -> bool:
        return self._saved or self._inner.exists()

    def _describe(self) -> dict[str, Any]:
        return {"rank": self._rank, "inner": type(self._inner).__name__}


def ddp_pipeline_nodes() -> set[str]:
    """Nodes that may run under ``torchrun``: training, and evaluation after it."""
    # lazy: the pipelines import torch, and settings.py (every `kedro` command) imports
    # this module
    from dqe_cir_pipeline.pipelines import evaluation, training

    allowed = training.create_pipeline() + evaluation.create_pipeline()
    return {n.name for n in allowed.nodes}


class DistributedHooks:
    """Make a ``torchrun`` launch of Kedro write once, from rank 0."""

    @hook_impl
    def after_catalog_created(self, catalog: DataCatalog) -> None:
        rank, world = launch_rank()
        if rank == 0:
            return
        catalog_logger = logging.getLogger("kedro.io.data_catalog")
        level = catalog_logger.level
        catalog_logger.setLevel(logging.ERROR)  # silence one "Replacing dataset" per entry
        try:
            for name in catalog.keys():
                if name == "parameters" or name.startswith("params:"):
                    continue
                catalog[name] = RankLocalDataset(catalog.get(name), name, rank)
        finally:
            catalog_logger.setLevel(level)
        logger.info(
            "rank %d/%d: datasets are read-only here; rank 0 writes them and logs to MLflow",
            rank,
            world,
        )

    @hook_impl
    def before_pipeline_run(self, pipeline: Pipeline) -> None:
        rank, world = launch_rank()
        if world == 1:
            return
        extra = sorted({n.name for n in pipeline.nodes} - ddp_pipeline_nodes())
        if extra:
            raise RuntimeError(
                f"under torchrun (WORLD_SIZE={world}) only the training and evaluation "
                "pipelines run; "
                f"this run also has {extra}. Run the earlier stages in one process first "
                "(kedro run --pipelines data_ingestion, embedding_extraction, negative_mining), "
                "then torchrun ... -m kedro run --pipelines training"
            )
