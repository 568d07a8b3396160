"""The DQE-CIR training loop on cached ViT tokens.

``fit`` is a short loop: plan an epoch (negatives, order, captions), train it, validate,
record and checkpoint. It returns the best checkpoint dict and the history and logs to no
tracker (the Kedro node hands its results to the catalog).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dqe_cir_pipeline.model.backbone import Backbone
from dqe_cir_pipeline.model.batch import BatchSource, EpochPlan, TrainBatch
from dqe_cir_pipeline.model.config import RuntimeConfig
from dqe_cir_pipeline.model.data import FeatureSource, TrainData, gathered_ahead
from dqe_cir_pipeline.model.device import autocast
from dqe_cir_pipeline.model.distributed import SINGLE, Distributed
from dqe_cir_pipeline.model.dqe import DQECIR, QueryOutput
from dqe_cir_pipeline.model.factory import build_loss
from dqe_cir_pipeline.model.losses import LOSS_TERMS, EncodedBatch, GlobalBatch
from dqe_cir_pipeline.model.mining import (
    mine_with_model,
    random_negatives,
    sampled_false_negative_rate,
    sampled_neighbour_share,
    zone_negatives,
)
from dqe_cir_pipeline.model.mining_result import MiningResult
from dqe_cir_pipeline.model.negatives import MiningConfig, refresh_epochs
from dqe_cir_pipeline.model.optim import build_optimizer, build_scheduler
from dqe_cir_pipeline.model.progress import Progress
from dqe_cir_pipeline.model.run_state import FitResult, RunState, Trainables
from dqe_cir_pipeline.model.train_config import TrainingConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitData:
    """What a run trains and selects on.

    Attributes:
        train: the training queries and their negative pool.
        features: cached ViT tokens by image id.
        validate: the validation metrics of the current model (the eval protocol).
        selection_metric: the ``validate`` key that picks the best epoch (higher is better).
        initial_mining: negatives mined before training (the negative_mining pipeline),
            used for epoch 0 instead of mining again.
    """

    train: TrainData
    features: FeatureSource
    validate: Callable[[DQECIR], dict[str, float]]
    selection_metric: str = "avg"
    initial_mining: MiningResult | None = None


@dataclass(frozen=True)
class StepRows:
    """One global batch of query indices and this rank's slice of it."""

    batch: np.ndarray  # (G,) the global batch
    local: np.ndarray  # (b,) this rank's rows
    sizes: list[int]  # every rank's number of rows
    offset: int  # position of this rank's first row in the global batch


class TrainStep(nn.Module):
    """The forward of one training batch, as one module DistributedDataParallel can wrap
    (DDP synchronises the gradients of what its wrapped ``forward`` touched)."""

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
    """One training run's moving parts: model, loss, optimiser, schedule, data, ranks."""

    def __init__(
        self,
        model: DQECIR,
        config: TrainingConfig,
        mining: MiningConfig,
        source: BatchSource,
        device: torch.device,
        amp_dtype: str | None,
        distributed: Distributed,
    ) -> None:
        self.model, self.config, self.mining, self.source = model, config, mining, source
        self.data = source.data
        self.device, self.amp_dtype, self.distributed = device, amp_dtype, distributed
        self.loss_fn = build_loss(config.loss)
        self.step_module: nn.Module = TrainStep(model)
        if distributed.enabled:
            # static_graph: the same parameters take part in every step, and ablations leave
            # some unused for the whole run (the attribute heads without weights and margins)
            self.step_module = DistributedDataParallel(
                self.step_module,
                device_ids=[device.index] if device.type == "cuda" else None,
                static_graph=True,
            )
        optimizer = build_optimizer(model, config.optim)
        total_steps = config.loop.epochs * math.ceil(len(self.data) / config.loop.batch_size)
        scheduler = build_scheduler(optimizer, config.optim, total_steps)
        self.trainables = Trainables(model, optimizer, scheduler)

    def plan_epoch(self, epoch: int, state: RunState, initial: MiningResult | None) -> EpochPlan:
        """Rank 0: (re-)mine if scheduled, then draw negatives, order and captions.

        The draws use one generator seeded by ``(seed, epoch)`` in a fixed order, so a
        resumed run plans exactly the epochs an uninterrupted run would.
        """
        loop, data = self.config.loop, self.data
        rng = np.random.default_rng([loop.seed, epoch])
        mining_seconds = self._refresh_mining(epoch, state, initial)
        negatives: np.ndarray | None = None
        if loop.negatives == "random" or (loop.negatives == "mined" and state.mining is None):
            negatives = random_negatives(data, rng)  # QuRe: random before the first refresh
        elif loop.negatives == "mined":
            assert state.mining is not None
            negatives = zone_negatives(state.mining, data, rng)
        order = rng.permutation(len(data))
        if loop.caption_form == "random":
            texts = [forms[int(rng.integers(len(forms)))] for forms in data.captions_train]
        else:
            texts = list(data.caption_eval)
        contrasts = None
        loss = self.config.loss
        if loss.use_margins and loss.margin_negatives == "attribute":
            contrasts = data.draw_contrasts(rng)  # drawn last: earlier draws unchanged
        stats = self._plan_stats(negatives, contrasts)
        return EpochPlan(negatives, order, texts, mining_seconds, contrasts, stats)

    def _refresh_mining(self, epoch: int, state: RunState, initial: MiningResult | None) -> float:
        """Mine into ``state.mining`` when this epoch is scheduled to; returns the seconds."""
        loop = self.config.loop
        first = epoch == 0 and loop.initial_negatives == "model"
        refresh = set(refresh_epochs(loop.epochs, loop.refresh_interval))
        if loop.negatives != "mined" or not (first or epoch in refresh):
            return 0.0
        t0 = time.perf_counter()
        stats: dict[str, float] = {}
        if first and initial is not None:
            state.mining = initial  # its statistics are the mining pipeline's
        else:
            state.mining, stats = mine_with_model(
                self.model,
                self.source.features,
                self.source.tokenizer,
                self.data,
                self.mining,
                max_len=self.source.max_text_len,
                amp_dtype=self.amp_dtype,
            )
        seconds = time.perf_counter() - t0
        summary = {"epoch": float(epoch), "seconds": seconds, **state.mining.summary(), **stats}
        state.mining_summaries.append(summary)
        if not first:
            logger.info("epoch %d: refreshed negatives in %.2fs", epoch, seconds)
        return seconds

    def _plan_stats(
        self, negatives: np.ndarray | None, contrasts: np.ndarray | None
    ) -> dict[str, float]:
        """Share of negatives from the query's neighbourhood and, where queries list several
        valid targets, of negatives that are one; attribute-contrast coverage."""
        d, stats = self.data, {}
        if negatives is not None and len(d.neighbour_keys):
            stats["negatives/neighbourhood_share"] = sampled_neighbour_share(d, negatives)
        if negatives is not None and d.multi_target:
            stats["negatives/false_negative_rate"] = sampled_false_negative_rate(d, negatives)
        if contrasts is not None:
            for col, (name, touches) in enumerate(
                (("color", d.edits_color), ("shape", d.edits_shape))
            ):
                n = int(touches.sum())
                covered = int((contrasts[touches, col] >= 0).sum())
                stats[f"margins/{name}_contrast_rate"] = covered / n if n else 0.0
        return stats

    def _steps(self, plan: EpochPlan) -> tuple[list[StepRows], int]:
        """This rank's share of every global batch, and the rows no rank trains on."""
        rank, world = self.distributed.rank, self.distributed.world_size
        size = self.config.loop.batch_size
        steps, skipped = [], 0
        for start in range(0, len(plan.order), size):
            idx = plan.order[start : start + size]
            sizes = [len(part) for part in np.array_split(idx, world)]
            if min(sizes) == 0:  # a tail batch smaller than the world: every rank skips it
                skipped += len(idx)
                continue
            offset = sum(sizes[:rank])
            steps.append(StepRows(idx, idx[offset : offset + sizes[rank]], sizes, offset))
        return steps, skipped

    def _global_batch(
        self,
        rows: StepRows,
        plan: EpochPlan,
        tgt_emb: torch.Tensor,
        neg_emb: torch.Tensor | None,
    ) -> GlobalBatch | None:
        """Every rank's targets/negatives (with gradients), for a loss over the global batch."""
        dist, data, device, idx = self.distributed, self.data, self.device, rows.batch
        if not dist.enabled:
            return None
        negs = plan.negatives
        return GlobalBatch(
            targets=dist.gather_rows(tgt_emb, rows.sizes, differentiable=True),
            negatives=None
            if neg_emb is None
            else dist.gather_rows(neg_emb, rows.sizes, differentiable=True),
            target_index=torch.as_tensor(data.target_idx[idx], device=device),
            negative_index=None if negs is None else torch.as_tensor(negs[idx], device=device),
            offset=rows.offset,
            n_color=int(data.edits_color[idx].sum()),
            n_shape=int(data.edits_shape[idx].sum()),
            world_size=dist.world_size,
        )

    def _step(self, batch: TrainBatch, rows: StepRows, plan: EpochPlan) -> torch.Tensor:
        """One optimiser step on this rank's rows; returns the loss terms (detached)."""
        b = batch.to(self.device)
        with autocast(self.device, self.amp_dtype):
            out, tgt_emb, neg_emb, con_emb = self.step_module(
                b.reference, b.input_ids, b.attention_mask, b.target, b.negative, b.contrast
            )
            contrasts = None
            if con_emb is not None and b.contrast_mask is not None:
                # scatter the encoded contrast images to their (row, attribute) slots
                contrasts = con_emb.new_zeros((len(b), 2, *con_emb.shape[1:]))
                contrasts = contrasts.index_put((b.contrast_mask,), con_emb)
            encoded = EncodedBatch(
                queries=out,
                targets=tgt_emb,
                edits_color=b.edits_color,
                edits_shape=b.edits_shape,
                negatives=neg_emb,
                target_index=b.target_index,
                negative_index=b.negative_index,
                contrasts=contrasts,
                contrast_mask=b.contrast_mask,
                global_batch=self._global_batch(rows, plan, tgt_emb, neg_emb),
            )
            terms = self.loss_fn(self.model, encoded)
        optimizer = self.trainables.optimizer
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        optimizer.step()
        self.trainables.scheduler.step()
        return terms.stacked()

    def train_epoch(
        self, plan: EpochPlan, epoch: int = 0, later_s: float = 0.0
    ) -> dict[str, float]:
        """Train one epoch of ``plan``; returns mean loss terms and throughput.

        ``epoch`` and ``later_s`` (seconds of validation and mining expected in the epochs
        after this one) only feed the progress report.
        """
        self.model.train()
        sums = dict.fromkeys(LOSS_TERMS, 0.0)
        start = time.perf_counter()
        steps, skipped = self._steps(plan)
        batches = gathered_ahead(
            [rows.local for rows in steps], lambda r: self.source.gather(plan, r)
        )
        world, loop = self.distributed.world_size, self.config.loop
        progress = Progress(
            len(steps),
            desc=f"epoch {epoch + 1}/{loop.epochs}",
            unit="step",
            item_unit="triplets",
            log_every_s=loop.log_every_s,
            log_first=True,
            later=len(steps) * (loop.epochs - epoch - 1),
            later_s=later_s,
            enabled=self.distributed.is_main,
            logger=logger,
        )
        seen = 0
        with progress:
            for rows, batch in zip(steps, batches, strict=True):
                values = (self.distributed.sum(self._step(batch, rows, plan)) / world).tolist()
                means = dict(zip(LOSS_TERMS, values, strict=True))
                for name, value in means.items():
                    sums[name] += value * len(rows.batch)
                seen += len(rows.batch)
                lr = self.trainables.scheduler.get_last_lr()[0]
                progress.update(
                    items=len(rows.batch), loss=f"{sums['loss'] / seen:.4f}", lr=f"{lr:.2e}"
                )
        seconds = time.perf_counter() - start
        if skipped:
            logger.warning("skipped %d triplets in a batch smaller than the world size", skipped)
        n = len(self.data)
        return {
            **{f"train/{k}": v / max(1, n - skipped) for k, v in sums.items()},
            "train/lr": float(self.trainables.scheduler.get_last_lr()[0]),
            "train/temperature": float(self.model.temperature().detach()),
            "train/triplets_per_s": n / max(seconds, 1e-9),
            **{f"train/{k}": v for k, v in plan.stats.items()},
        }


def fit(
    config: TrainingConfig,
    data: FitData,
    model: DQECIR,
    backbone: Backbone,
    mining: MiningConfig,
    *,
    runtime: RuntimeConfig | None = None,
    distributed: Distributed = SINGLE,
    stop_after_epochs: int | None = None,
) -> FitResult:
    """Train ``model`` on cached ViT tokens and return the best checkpoint and history.

    Args:
        config: the recipe (model, loss, optimiser, loop).
        data: training set, cached tokens, validation and the initial negatives.
        model: the DQE-CIR module (trainable parts only; the ViT is not in it).
        backbone: gives the tokenizer, its truncation, and the key and name stored in
            (and checked against) checkpoints.
        mining: negative-mining settings used at every refresh.
        runtime: device and autocast dtype (default: ``RuntimeConfig()``).
        distributed: this process's rank under ``torchrun``: each rank trains on a slice
            of every global batch; rank 0 alone mines, validates and writes checkpoints.
            ``loop.run_dir`` must be on a filesystem every rank can read.
        stop_after_epochs: stop (as if killed) after this many epochs of this call.
    """
    runtime = runtime or RuntimeConfig()
    device = distributed.setup(runtime.device)
    torch.manual_seed(config.loop.seed + distributed.rank)
    model.to(device)
    model.train()
    source = BatchSource(
        data.train, data.features, backbone.tokenizer, backbone.max_text_len, device.type == "cuda"
    )
    trainer = Trainer(model, config, mining, source, device, runtime.amp_dtype, distributed)
    state = RunState.start(
        trainer.trainables,
        config.fingerprint(backbone.max_text_len),
        {"key": backbone.key, "name": backbone.name},
        config.loop,
        distributed,
    )
    overheads: list[float] = []  # seconds of each epoch outside its training steps
    for epoch in range(state.start_epoch, config.loop.epochs):
        if stop_after_epochs is not None and epoch - state.start_epoch >= stop_after_epochs:
            break
        start = time.perf_counter()
        plan = distributed.broadcast(
            trainer.plan_epoch(epoch, state, data.initial_mining) if distributed.is_main else None
        )
        later_s = float(np.mean(overheads)) * (config.loop.epochs - epoch - 1) if overheads else 0.0
        train_start = time.perf_counter()
        record = trainer.train_epoch(plan, epoch, later_s)
        train_seconds = time.perf_counter() - train_start
        metrics = distributed.broadcast(data.validate(model) if distributed.is_main else None)
        record["train/epoch_seconds"] = time.perf_counter() - start
        overheads.append(record["train/epoch_seconds"] - train_seconds)
        record["train/mining_seconds"] = plan.mining_seconds
        record.update({f"val/{k}": float(v) for k, v in metrics.items()})
        score = float(metrics[data.selection_metric])
        logger.info(
            "epoch %d/%d loss %.4f val %s %.2f (%.1f triplets/s)",
            epoch + 1,
            config.loop.epochs,
            record["train/loss"],
            data.selection_metric,
            score,
            record["train/triplets_per_s"],
        )
        state.end_epoch(
            epoch, {"epoch": float(epoch), **record}, score, metrics, trainer.trainables
        )
    return state.result()
