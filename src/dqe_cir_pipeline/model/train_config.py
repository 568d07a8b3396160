"""The ``training`` parameters: model, loss, optimiser and loop blocks, and their fingerprint."""

from __future__ import annotations

from dataclasses import asdict, field
from typing import Any

from dqe_cir_pipeline.model.config import config_block
from dqe_cir_pipeline.model.dqe import DQEConfig
from dqe_cir_pipeline.model.losses import LossConfig


@config_block
class OptimConfig:
    """AdamW with linear warmup then cosine decay (``training.optim``).

    Attributes:
        lr: peak learning rate (the tiny default trains from scratch; pretrained
            recipes use 1e-5 / 2e-5).
        weight_decay: AdamW weight decay (not on biases, norms, query tokens).
        warmup_steps: linear warmup steps; the post-LN Q-Former diverges without it.
        min_lr_ratio: the cosine ends at ``lr * min_lr_ratio``.
        grad_clip: gradient-norm clip.
    """

    lr: float = 6.0e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0


@config_block
class LoopConfig:
    """The training loop (``training.loop``).

    Attributes:
        seed: seeds the model's initialisation, shuffling, captions and negatives.
        epochs: training epochs.
        batch_size: global batch (split across ranks under ``torchrun``).
        negatives: ``mined`` (``mining.strategy``, refreshed) | ``random`` | ``none``.
        refresh_interval: epochs between negative refreshes; ``None``: QuRe's floor(E/6).
        initial_negatives: ``model`` (mined from the initial model) | ``random`` (QuRe).
        caption_form: ``random`` (a random training form per epoch) | ``eval``.
        run_dir: folder of the resumable ``last.pt`` / ``best.pt``; ``None``: no files.
        resume: continue from ``run_dir/last.pt`` when it exists.
        log_every_s: seconds between progress lines when output is not a terminal (the
            first step's line always); 0: none. Not part of the recipe.
    """

    seed: int = 0
    epochs: int = 16
    batch_size: int = 32
    negatives: str = "mined"
    refresh_interval: int | None = 2
    initial_negatives: str = "model"
    caption_form: str = "random"
    run_dir: str | None = None
    resume: bool = True
    log_every_s: float = 60.0

    def __post_init__(self) -> None:
        if self.log_every_s < 0:
            raise ValueError(f"log_every_s must be >= 0, got {self.log_every_s}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.negatives not in {"mined", "random", "none"}:
            raise ValueError(f"negatives must be mined|random|none, got {self.negatives!r}")
        if self.initial_negatives not in {"model", "random"}:
            raise ValueError(
                f"initial_negatives must be model|random, got {self.initial_negatives!r}"
            )
        if self.caption_form not in {"random", "eval"}:
            raise ValueError(f"caption_form must be random|eval, got {self.caption_form!r}")


@config_block
class TrainingConfig:
    """The ``training`` parameters: the model, loss, optimiser and loop blocks."""

    model: DQEConfig = field(default_factory=DQEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)

    def __post_init__(self) -> None:
        if self.loss.objective in ("pairwise_kl", "batch_kl") and self.loop.negatives == "none":
            raise ValueError(
                f"objective {self.loss.objective} needs a negative: set training.loop.negatives "
                "to mined or random"
            )

    def fingerprint(self, max_text_len: int) -> dict[str, Any]:
        """What a resumed run must share with the run it resumes (and what a checkpoint
        records): everything but where it is written, whether it resumes and how it reports
        progress, plus the backbone's text length."""
        run_only = ("run_dir", "resume", "log_every_s")
        loop = {k: v for k, v in asdict(self.loop).items() if k not in run_only}
        return {
            "model": asdict(self.model),
            "loss": asdict(self.loss),
            "optim": asdict(self.optim),
            "loop": loop,
            "max_text_len": max_text_len,
        }
