"""The DQE-CIR training loop on cached ViT tokens.

``fit`` is a short loop: plan an epoch (negatives, order, captions), train it, validate,
checkpoint. The loop returns the best checkpoint dict and a history and logs nothing to
any tracker (the Kedro node hands results to the catalog, kedro-mlflow logs them).

Only the last-epoch and best-epoch checkpoints are written here (atomically, into
``loop.run_dir``): a multi-hour node must persist mid-node to be resumable, and Kedro
saves a node's outputs only when it returns. The best checkpoint is also returned so
the catalog (and MLflow) get it as a normal dataset.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dqe_cir_pipeline.model.config import config_block
from dqe_cir_pipeline.model.data import FeatureSource, TrainData, prefetched, to_device, tokenize
from dqe_cir_pipeline.model.device import autocast
from dqe_cir_pipeline.model.distributed import SINGLE, Distributed
from dqe_cir_pipeline.model.dqe import DQECIR, DQEConfig, QueryOutput
from dqe_cir_pipeline.model.losses import GlobalBatch, LossConfig
from dqe_cir_pipeline.model.mining import (
    mine_with_model,
    random_negatives,
    sampled_neighbour_share,
    zone_negatives,
)
from dqe_cir_pipeline.model.mining_result import MiningResult
from dqe_cir_pipeline.model.negatives import MiningConfig, refresh_epochs
from dqe_cir_pipeline.model.run_state import FitResult, RunState

logger = logging.getLogger(__name__)

LOSS_TERMS = ("loss", "main", "color_margin", "shape_margin", "weight_order")


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

    def __post_init__(self) -> None:
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
        records): everything but where it is written and whether it resumes, plus the
        backbone's text length."""
        loop = {k: v for k, v in asdict(self.loop).items() if k not in ("run_dir", "resume")}
        return {
            "model": asdict(self.model),
            "loss": asdict(self.loss),
            "optim": asdict(self.optim),
            "loop": loop,
            "max_text_len": max_text_len,
        }


@dataclass
class EpochPlan:
    """What rank 0 decides before an epoch and every rank uses: (N,) negatives or None,
    the order of the queries, the caption of each query, seconds spent mining."""

    negatives: np.ndarray | None
    order: np.ndarray
    texts: list[str]
    mining_seconds: float = 0.0
    #: (N, 2) attribute-contrast images for the margins (colour, shape; -1: none)
    contrasts: np.ndarray | None = None
    #: statistics of what was drawn, logged as ``train/<key>``
    stats: dict[str, float] = field(default_factory=dict)


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup then cosine decay to ``min_ratio`` of the peak learning rate."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, query tokens and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "query_tokens" in name else decay).append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


class TrainStep(nn.Module):
    """The forward of one training batch, as one module DistributedDataParallel can wrap.

    DDP synchronises gradients of the parameters its wrapped ``forward`` touched, so the
    query, target and negative encodings all run through here rather than through the
    model's methods directly.
    """

    def __init__(self, model: DQECIR) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        reference_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_tokens: torch.Tensor,
        negative_tokens: torch.Tensor | None,
        contrast_tokens: torch.Tensor | None = None,
    ) -> tuple[QueryOutput, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        out = self.model.encode_queries(reference_tokens, input_ids, attention_mask)
        target = self.model.encode_targets(target_tokens)
        negative = None if negative_tokens is None else self.model.encode_targets(negative_tokens)
        contrast = None if contrast_tokens is None else self.model.encode_targets(contrast_tokens)
        return out, target, negative, contrast


class Trainer:
    """One training run's moving parts: model, loss, optimiser, schedule, data, ranks.

    Args:
        model: the DQE-CIR module (trainable parts only; the ViT is not in it).
        loss_fn: ``DQELoss``; called as ``loss_fn(model, out, tgt, neg, color, shape, ...)``.
        tokenizer: the backbone's tokenizer.
        features: cached ViT tokens by image id.
        data: training queries and pool.
        cfg: the recipe.
        mining: negative-mining settings used at every refresh.
        distributed: this process's rank under ``torchrun`` (see :func:`fit`).
        device: the resolved device of this rank.
        amp_dtype: autocast dtype on CUDA (``None`` or ``float32``: no autocast).
        max_text_len: tokenizer truncation (the backbone's).
    """

    def __init__(
        self,
        model: DQECIR,
        loss_fn: nn.Module,
        tokenizer: Any,
        features: FeatureSource,
        data: TrainData,
        cfg: TrainingConfig,
        mining: MiningConfig,
        distributed: Distributed,
        device: torch.device,
        amp_dtype: str | None,
        max_text_len: int,
    ) -> None:
        self.model, self.loss_fn, self.tokenizer = model, loss_fn, tokenizer
        self.features, self.data, self.cfg, self.mining = features, data, cfg, mining
        self.distributed, self.device, self.amp_dtype = distributed, device, amp_dtype
        self.max_text_len = max_text_len
        self.step_module: nn.Module = TrainStep(model)
        if distributed.enabled:
            # static_graph: the same parameters take part in every step, and ablations leave
            # some unused for the whole run (the attribute heads without weights and margins)
            self.step_module = DistributedDataParallel(
                self.step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
                static_graph=True,
            )
        self.optimizer = build_optimizer(model, cfg.optim)
        total_steps = cfg.loop.epochs * math.ceil(len(data) / cfg.loop.batch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.warmup_steps, total_steps, cfg.optim.min_lr_ratio)
        )

    def mine(self) -> tuple[MiningResult, dict[str, float]]:
        return mine_with_model(
            self.model,
            self.features,
            self.tokenizer,
            self.data,
            self.mining,
            max_len=self.max_text_len,
            amp_dtype=self.amp_dtype,
        )

    def plan_epoch(self, epoch: int, state: RunState, initial: MiningResult | None) -> EpochPlan:
        """Rank 0: (re-)mine if scheduled, then draw negatives, order and captions.

        The draws use one generator seeded by ``(seed, epoch)`` in a fixed order, so a
        resumed run plans exactly the epochs an uninterrupted run would.
        """
        loop = self.cfg.loop
        rng = np.random.default_rng([loop.seed, epoch])
        mining_seconds = 0.0
        refresh = set(refresh_epochs(loop.epochs, loop.refresh_interval))
        first = epoch == 0 and loop.initial_negatives == "model"
        if loop.negatives == "mined" and (first or epoch in refresh):
            t0 = time.perf_counter()
            stats: dict[str, float] = {}
            if first and initial is not None:
                state.mining = initial  # its statistics are the mining pipeline's
            else:
                state.mining, stats = self.mine()
            mining_seconds = time.perf_counter() - t0
            state.mining_summaries.append(
                {
                    "epoch": float(epoch),
                    "seconds": mining_seconds,
                    **state.mining.summary(),
                    **stats,
                }
            )
            if not first:
                logger.info("epoch %d: refreshed negatives in %.2fs", epoch, mining_seconds)
        negatives: np.ndarray | None = None
        if loop.negatives == "random" or (loop.negatives == "mined" and state.mining is None):
            negatives = random_negatives(self.data, rng)  # QuRe: random before the first refresh
        elif loop.negatives == "mined":
            assert state.mining is not None
            negatives = zone_negatives(state.mining, self.data, rng)
        order = rng.permutation(len(self.data))
        if loop.caption_form == "random":
            texts = [forms[int(rng.integers(len(forms)))] for forms in self.data.captions_train]
        else:
            texts = list(self.data.caption_eval)
        contrasts = None
        loss = self.cfg.loss
        if loss.use_margins and loss.margin_negatives == "attribute":
            contrasts = self.data.draw_contrasts(rng)  # drawn last: earlier draws unchanged
        return EpochPlan(
            negatives,
            order,
            texts,
            mining_seconds,
            contrasts,
            self._plan_stats(negatives, contrasts),
        )

    def _plan_stats(
        self, negatives: np.ndarray | None, contrasts: np.ndarray | None
    ) -> dict[str, float]:
        """Share of negatives from the query's neighbourhood; attribute-contrast coverage."""
        d, stats = self.data, {}
        if negatives is not None and len(d.neighbour_keys):
            stats["negatives/neighbourhood_share"] = sampled_neighbour_share(d, negatives)
        if contrasts is not None:
            for col, (name, touches) in enumerate(
                (("color", d.edits_color), ("shape", d.edits_shape))
            ):
                n = int(touches.sum())
                covered = int((contrasts[touches, col] >= 0).sum())
                stats[f"margins/{name}_contrast_rate"] = covered / n if n else 0.0
        return stats

    def _steps(
        self, plan: EpochPlan
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, list[int], int]], int]:
        """This rank's share of every global batch: (global rows, local rows, sizes, offset)."""
        rank, world = self.distributed.rank, self.distributed.world_size
        steps, skipped = [], 0
        for start in range(0, len(plan.order), self.cfg.loop.batch_size):
            idx = plan.order[start : start + self.cfg.loop.batch_size]
            sizes = [len(part) for part in np.array_split(idx, world)]
            if min(sizes) == 0:  # a tail batch smaller than the world: every rank skips it
                skipped += len(idx)
                continue
            offset = sum(sizes[:rank])
            steps.append((idx, idx[offset : offset + sizes[rank]], sizes, offset))
        return steps, skipped

    def _global_batch(
        self,
        idx: np.ndarray,
        sizes: list[int],
        offset: int,
        plan: EpochPlan,
        tgt_emb: torch.Tensor,
        neg_emb: torch.Tensor | None,
    ) -> GlobalBatch | None:
        """Every rank's targets/negatives (with gradients), for a loss over the global batch."""
        dist, data, device = self.distributed, self.data, self.device
        if not dist.enabled:
            return None
        negs = plan.negatives
        return GlobalBatch(
            targets=dist.gather_rows(tgt_emb, sizes, differentiable=True),
            negatives=None
            if neg_emb is None
            else dist.gather_rows(neg_emb, sizes, differentiable=True),
            target_index=torch.as_tensor(data.target_idx[idx], device=device),
            negative_index=None if negs is None else torch.as_tensor(negs[idx], device=device),
            offset=offset,
            n_color=int(data.edits_color[idx].sum()),
            n_shape=int(data.edits_shape[idx].sum()),
            world_size=dist.world_size,
        )

    def _step(
        self,
        local: np.ndarray,
        host: list[torch.Tensor],
        plan: EpochPlan,
        global_rows: tuple[np.ndarray, list[int], int],
    ) -> torch.Tensor:
        """One optimiser step on this rank's rows; returns the loss terms (detached)."""
        data, device, negs = self.data, self.device, plan.negatives
        ref, tgt = to_device(host[0], device), to_device(host[1], device)
        neg = to_device(host[2], device) if negs is not None else None
        contrast_mask = con = None
        if plan.contrasts is not None:
            contrast_mask = torch.as_tensor(plan.contrasts[local] >= 0, device=device)  # (b, 2)
            if bool(contrast_mask.any()):
                con = to_device(host[-1], device)
        ids, mask = tokenize(
            self.tokenizer, [plan.texts[i] for i in local], self.max_text_len, device
        )
        with autocast(device, self.amp_dtype):
            out, tgt_emb, neg_emb, con_emb = self.step_module(ref, ids, mask, tgt, neg, con)
            contrast_emb = None
            if con_emb is not None and contrast_mask is not None:
                # scatter the encoded contrast images to their (row, attribute) slots
                contrast_emb = con_emb.new_zeros((len(local), 2, *con_emb.shape[1:]))
                contrast_emb = contrast_emb.index_put((contrast_mask,), con_emb)
            terms = self.loss_fn(
                self.model,
                out,
                tgt_emb,
                neg_emb,
                torch.as_tensor(data.edits_color[local], device=device),
                torch.as_tensor(data.edits_shape[local], device=device),
                target_index=torch.as_tensor(data.target_idx[local], device=device),
                negative_index=None
                if negs is None
                else torch.as_tensor(negs[local], device=device),
                global_batch=self._global_batch(*global_rows, plan, tgt_emb, neg_emb),
                contrast_emb=contrast_emb,
                contrast_mask=contrast_mask,
            )
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return torch.stack([terms[name].detach().float() for name in LOSS_TERMS])

    def train_epoch(self, plan: EpochPlan) -> dict[str, float]:
        """Train one epoch of ``plan``; returns mean loss terms and throughput."""
        self.model.train()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        start = time.perf_counter()
        steps, skipped = self._steps(plan)
        d = self.data
        id_lists = [
            [[d.reference_ids[i] for i in local], [d.target_ids[i] for i in local]]
            + ([] if plan.negatives is None else [[d.pool_ids[j] for j in plan.negatives[local]]])
            + (
                []
                if plan.contrasts is None
                else [[d.pool_ids[j] for j in plan.contrasts[local].ravel() if j >= 0]]
            )
            for _, local, _, _ in steps
        ]
        world = self.distributed.world_size
        host_batches = prefetched(self.features, id_lists, pin=self.device.type == "cuda")
        # a progress bar (rate, ETA, running loss) on a terminal; silent in logs and CI
        bar = tqdm(
            zip(steps, host_batches, strict=True),
            total=len(steps),
            desc="train",
            unit="batch",
            leave=False,
            disable=None if self.distributed.is_main else True,
        )
        for (idx, local, sizes, offset), host in bar:
            terms = self._step(local, host, plan, (idx, sizes, offset))
            values = (self.distributed.sum(terms) / world).tolist()
            for name, value in zip(LOSS_TERMS, values, strict=True):
                sums[name] += value * len(idx)
            bar.set_postfix(loss=f"{values[0]:.3f}", refresh=False)
        seconds = time.perf_counter() - start
        if skipped:
            logger.warning("skipped %d triplets in a batch smaller than the world size", skipped)
        return {
            **{f"train/{k}": v / max(1, len(d) - skipped) for k, v in sums.items()},
            "train/lr": float(self.scheduler.get_last_lr()[0]),
            "train/temperature": float(self.model.temperature().detach()),
            "train/triplets_per_s": len(d) / max(seconds, 1e-9),
            **{f"train/{k}": v for k, v in plan.stats.items()},
        }


def _run_epoch(
    trainer: Trainer,
    state: RunState,
    epoch: int,
    validate: Callable[[DQECIR], dict[str, float]],
    initial_mining: MiningResult | None,
    selection_metric: str,
) -> None:
    """Plan (rank 0), train (every rank), validate (rank 0), record and checkpoint."""
    dist, start = trainer.distributed, time.perf_counter()
    plan = dist.broadcast(
        trainer.plan_epoch(epoch, state, initial_mining) if dist.is_main else None
    )
    record = trainer.train_epoch(plan)
    metrics = dist.broadcast(validate(trainer.model) if dist.is_main else None)
    record["train/epoch_seconds"] = time.perf_counter() - start
    record["train/mining_seconds"] = plan.mining_seconds
    record.update({f"val/{k}": float(v) for k, v in metrics.items()})
    score = float(metrics[selection_metric])
    logger.info(
        "epoch %d/%d loss %.4f val %s %.2f (%.1f triplets/s)",
        epoch + 1,
        trainer.cfg.loop.epochs,
        record["train/loss"],
        selection_metric,
        score,
        record["train/triplets_per_s"],
    )
    state.end_epoch(epoch, {"epoch": float(epoch), **record}, score, metrics, trainer)


def fit(
    model: DQECIR,
    loss_fn: nn.Module,
    tokenizer: Any,
    features: FeatureSource,
    data: TrainData,
    cfg: TrainingConfig,
    mining: MiningConfig,
    validate: Callable[[DQECIR], dict[str, float]],
    *,
    backbone_meta: dict[str, str],
    max_text_len: int = 32,
    device: str = "auto",
    amp_dtype: str | None = "bfloat16",
    initial_mining: MiningResult | None = None,
    selection_metric: str = "avg",
    stop_after_epochs: int | None = None,
    distributed: Distributed = SINGLE,
) -> FitResult:
    """Train ``model`` on cached ViT tokens and return the best checkpoint and history.

    Args:
        model, loss_fn, tokenizer, features, data, cfg, mining: see :class:`Trainer`.
        validate: returns the validation metrics of the current model (eval protocol).
        backbone_meta: ``{"key": ..., "name": ...}``; stored in, and checked against, checkpoints.
        max_text_len: tokenizer truncation (the backbone's).
        device: ``auto | cpu | cuda``; amp_dtype: autocast dtype on CUDA.
        initial_mining: negatives mined before training (the negative_mining pipeline);
            used for epoch 0 instead of mining again.
        selection_metric: validation key that picks the best epoch (higher is better).
        stop_after_epochs: stop (as if killed) after this many epochs of this call; tests
            use it to prove that resuming gives the same result.
        distributed: this process's rank under ``torchrun``. With more than one rank the
            model is wrapped in DistributedDataParallel and each rank trains on a slice of
            every global batch (``loop.batch_size`` is the global batch); rank 0 alone
            mines, validates and writes checkpoints and broadcasts what the others need.
            ``run_dir`` must be on a filesystem every rank can read.
    """
    dev = distributed.setup(device)
    torch.manual_seed(cfg.loop.seed + distributed.rank)
    model.to(dev)
    model.train()
    trainer = Trainer(
        model,
        loss_fn,
        tokenizer,
        features,
        data,
        cfg,
        mining,
        distributed,
        dev,
        amp_dtype,
        max_text_len,
    )
    state = RunState.start(trainer, backbone_meta, distributed)
    for epoch in range(state.start_epoch, cfg.loop.epochs):
        if stop_after_epochs is not None and epoch - state.start_epoch >= stop_after_epochs:
            break
        _run_epoch(trainer, state, epoch, validate, initial_mining, selection_metric)
    return state.result()
