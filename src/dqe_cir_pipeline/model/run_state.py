"""What a training run carries from epoch to epoch, and its checkpoints as plain dicts.

``last.pt`` holds everything needed to continue bit for bit; ``best.pt`` the best epoch.
Both are built here (``last_checkpoint`` / ``best_checkpoint``), written atomically and
read back with ``torch.load(weights_only=True)``. A file that cannot be read back is set
aside as ``<name>.corrupt-<time>`` with a warning, never fatal and never silently skipped.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dqe_cir_pipeline.io_utils import set_aside
from dqe_cir_pipeline.model.distributed import Distributed
from dqe_cir_pipeline.model.mining_result import MiningResult
from dqe_cir_pipeline.model.state import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    atomic_torch_save,
    capture_rng_state,
    load_torch,
    restore_rng_state,
)
from dqe_cir_pipeline.model.train_config import LoopConfig

logger = logging.getLogger(__name__)

#: What ``last.pt`` / ``best.pt`` must hold to be resumed from.
LAST_KEYS = (
    "model",
    "optimizer",
    "scheduler",
    "rng",
    "epoch",
    "history",
    "mining_summaries",
    "best_score",
    "best_epoch",
)
BEST_KEYS = ("model", "metrics")


@dataclass
class FitResult:
    """What ``fit`` returns: the best checkpoint dict and the per-epoch history."""

    best_checkpoint: dict[str, Any]
    history: list[dict[str, float]]
    mining_summaries: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


@dataclass(frozen=True)
class Trainables:
    """What ``last.pt`` saves and restores in place: the weights and the optimiser's state."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


def state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``model``'s state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@dataclass
class RunState:
    """The mutable state of one training run (rank 0 owns what it writes).

    Attributes:
        config: the recipe's fingerprint (``TrainingConfig.fingerprint``), checked on resume.
        backbone: ``{"key": ..., "name": ...}`` of the backbone, checked on resume.
    """

    config: dict[str, Any]
    backbone: dict[str, str]
    run_dir: Path | None = None
    is_main: bool = True
    start_epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    mining_summaries: list[dict[str, float]] = field(default_factory=list)
    mining: MiningResult | None = None
    best_score: float = -math.inf
    best_epoch: int = -1
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def last_path(self) -> Path | None:
        return self.run_dir / "last.pt" if self.run_dir else None

    @property
    def best_path(self) -> Path | None:
        return self.run_dir / "best.pt" if self.run_dir else None

    @classmethod
    def start(
        cls,
        trainables: Trainables,
        config: dict[str, Any],
        backbone: dict[str, str],
        loop: LoopConfig,
        distributed: Distributed,
    ) -> RunState:
        """A fresh state, or the one in ``loop.run_dir/last.pt`` when resuming is asked for
        (``trainables`` are then restored in place).

        Raises:
            CheckpointMismatchError: ``last.pt`` was made with another backbone or recipe.
            RuntimeError: the ranks disagree on where to resume.
        """
        state = cls(
            config=config,
            backbone=dict(backbone),
            run_dir=Path(loop.run_dir) if loop.run_dir else None,
            is_main=distributed.is_main,
        )
        if loop.resume and state.last_path is not None and state.last_path.exists():
            state._resume(trainables)
        if state.start_epoch:
            if distributed.rank:  # the checkpoint holds rank 0's generators: keep streams distinct
                torch.manual_seed(loop.seed + 7919 * distributed.rank + state.start_epoch)
            logger.info("resumed training from %s at epoch %d", state.last_path, state.start_epoch)
        if distributed.broadcast(state.start_epoch) != state.start_epoch:
            raise RuntimeError(
                f"rank {distributed.rank} would resume at epoch {state.start_epoch} but rank 0 "
                f"would not: every rank must see the same {state.last_path} (put "
                "training.loop.run_dir on a shared file system)"
            )
        return state

    def end_epoch(
        self,
        epoch: int,
        record: dict[str, float],
        score: float,
        metrics: dict[str, float],
        trainables: Trainables,
    ) -> None:
        """Record the epoch, keep the best weights, write ``best.pt`` / ``last.pt`` (rank 0)."""
        self.history.append(record)
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = state_to_cpu(trainables.model)
            self.best_metrics = dict(metrics)
        if self.run_dir is None or not self.is_main:
            return
        if improved:
            atomic_torch_save(self.run_dir / "best.pt", self.best_checkpoint())
        atomic_torch_save(self.run_dir / "last.pt", self.last_checkpoint(epoch + 1, trainables))

    def last_checkpoint(self, next_epoch: int, trainables: Trainables) -> dict[str, Any]:
        """``last.pt``: everything a resumed run needs to continue at ``next_epoch``."""
        return {
            "model": state_to_cpu(trainables.model),
            "optimizer": trainables.optimizer.state_dict(),
            "scheduler": trainables.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "epoch": next_epoch,
            "config": self.config,
            "backbone": self.backbone,
            "history": self.history,
            "mining_summaries": self.mining_summaries,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "mining": None if self.mining is None else self.mining.to_state(),
        }

    def best_checkpoint(self) -> dict[str, Any]:
        """``best.pt`` and ``fit``'s result: the best epoch's weights with the recipe,
        backbone and validation metrics."""
        if self.best_state is None:
            raise RuntimeError(
                "training ran no epoch: check training.loop.epochs and the resume state"
            )
        return {
            "model": self.best_state,
            "epoch": self.best_epoch,
            "config": self.config,
            "backbone": self.backbone,
            "metrics": self.best_metrics,
        }

    def result(self) -> FitResult:
        return FitResult(
            best_checkpoint=self.best_checkpoint(),
            history=self.history,
            mining_summaries=self.mining_summaries,
            resumed_from_epoch=self.start_epoch,
        )

    def _resume(self, trainables: Trainables) -> None:
        """Continue from ``last.pt`` (and ``best.pt``), or leave the state fresh.

        Both files are read and checked before anything is restored, so a damaged file
        never leaves the run half restored. A damaged ``last.pt`` means a fresh start; a
        damaged or missing ``best.pt`` means the best epoch is chosen among those to come.

        Raises:
            CheckpointMismatchError: ``last.pt`` was made with another backbone or recipe.
        """
        assert self.last_path is not None and self.best_path is not None
        ckpt = self._readable(self.last_path, LAST_KEYS)
        if ckpt is None:
            logger.warning("training starts afresh in %s (epoch 0)", self.run_dir)
            return
        self._check_compatible(ckpt)
        best = None
        if self.best_path.exists():
            best = self._readable(self.best_path, BEST_KEYS)
        trainables.model.load_state_dict(ckpt["model"], strict=True)
        trainables.optimizer.load_state_dict(ckpt["optimizer"])
        trainables.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_epoch = int(ckpt["epoch"])
        self.history = list(ckpt["history"])
        self.mining_summaries = list(ckpt["mining_summaries"])
        if ckpt.get("mining") is not None:
            self.mining = MiningResult.from_state(ckpt["mining"])
        if best is not None:
            self.best_score = float(ckpt["best_score"])
            self.best_epoch = int(ckpt["best_epoch"])
            self.best_state, self.best_metrics = best["model"], dict(best["metrics"])
        elif int(ckpt["best_epoch"]) >= 0:
            logger.warning(
                "no readable %s: resuming at epoch %d, the best epoch is chosen among the "
                "epochs from there on",
                self.best_path,
                self.start_epoch,
            )
        restore_rng_state(ckpt["rng"])

    def _readable(self, path: Path, keys: tuple[str, ...]) -> dict[str, Any] | None:
        """The checkpoint at ``path``, or ``None`` after setting a damaged one aside
        (rank 0 renames it; every rank logs a warning naming it and why)."""
        try:
            ckpt = load_torch(path)
            absent = [k for k in keys if k not in ckpt]
            if absent:
                raise CheckpointCorruptError(f"checkpoint {path} lacks {absent}")
        except CheckpointCorruptError as err:
            moved = set_aside(path) if self.is_main else path
            logger.warning("%s; set aside as %s", err, moved)
            return None
        return ckpt

    def _check_compatible(self, ckpt: dict[str, Any]) -> None:
        """Refuse to resume a run made with another backbone or recipe."""
        problems = []
        saved_key = ckpt.get("backbone", {}).get("key")
        if saved_key != self.backbone.get("key"):
            problems.append(f"backbone key {saved_key!r} != {self.backbone.get('key')!r}")
        saved = ckpt.get("config", {})
        for block, values in self.config.items():
            if not isinstance(values, dict):
                if saved.get(block) != values:
                    problems.append(
                        f"training.{block}: checkpoint {saved.get(block)!r} != config {values!r}"
                    )
                continue
            have = saved.get(block) if isinstance(saved.get(block), dict) else {}
            for k, v in values.items():
                if have.get(k) != v:
                    problems.append(
                        f"training.{block}.{k}: checkpoint {have.get(k)!r} != config {v!r}"
                    )
        if problems:
            raise CheckpointMismatchError(
                f"cannot resume from {self.last_path}: "
                + "; ".join(problems)
                + ". Set training.loop.resume: false or point training.loop.run_dir at a new "
                "folder."
            )
