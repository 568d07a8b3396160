"""Encode and fit loops for DQE-CIR on cached ViT tokens.

The loops return embeddings, histories and checkpoint dicts; they log nothing to any
tracker (the Kedro nodes hand results to the catalog, kedro-mlflow logs them).

Training never runs the frozen ViT: reference, target and negative images arrive as
cached token matrices (``FeatureSource.get``), which is what makes an epoch cheap
(see ``benchmarks/bench_training_step.py``).

Only the last-epoch and best-epoch checkpoints are written here (atomically, into
``run_dir``): a multi-hour node must persist mid-node to be resumable, and Kedro only
saves a node's outputs when the node returns. The best checkpoint is also returned so
the catalog (and MLflow) get it as a normal dataset.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dqe_cir_pipeline.model.device import autocast
from dqe_cir_pipeline.model.distributed import SINGLE, Distributed
from dqe_cir_pipeline.model.dqe import DQECIR, QueryOutput
from dqe_cir_pipeline.model.losses import GlobalBatch
from dqe_cir_pipeline.model.negatives import (
    MiningConfig,
    MiningResult,
    mine_negatives,
    refresh_epochs,
    sample_negatives,
)
from dqe_cir_pipeline.model.state import (
    CheckpointMismatchError,
    atomic_torch_save,
    capture_rng_state,
    load_torch,
    restore_rng_state,
)

logger = logging.getLogger(__name__)


class FeatureSource(Protocol):
    """Anything that returns cached ViT tokens for image ids (the feature cache)."""

    def get(self, ids: Sequence[str]) -> np.ndarray:  # (n, T, D)
        ...


@dataclass
class TrainConfig:
    """Training recipe. Defaults are the embedded tiny default (see parameters_training.yml)."""

    seed: int = 0
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    amp_dtype: str = "bfloat16"
    objective: str = "batch_kl"
    negatives: str = "mined"  # mined | random | none
    refresh_interval: int | None = 2
    initial_negatives: str = "model"  # model | random
    use_attribute_weights: bool = True
    use_margins: bool = True
    margin: float = 0.1
    lambda_color: float = 0.5
    lambda_shape: float = 0.5
    base_weight_init: float = 0.8
    caption_form: str = "random"  # random | eval
    run_dir: str | None = None
    resume: bool = True
    eval_chunk_size: int = 1024
    device: str = "auto"
    max_text_len: int = 32

    def __post_init__(self) -> None:
        if self.negatives not in {"mined", "random", "none"}:
            raise ValueError(f"training.negatives must be mined|random|none, got {self.negatives!r}")
        if self.objective in ("pairwise_kl", "batch_kl") and self.negatives == "none":
            raise ValueError(f"objective {self.objective} needs a negative: set negatives to mined or random")
        if self.caption_form not in {"random", "eval"}:
            raise ValueError(f"training.caption_form must be random|eval, got {self.caption_form!r}")

    @classmethod
    def from_dict(cls, params: dict[str, Any], **overrides: Any) -> TrainConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"unknown training parameters: {sorted(unknown)}")
        return cls(**{**params, **overrides})

    def fingerprint(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it resumes."""
        ignore = {"run_dir", "resume", "device", "eval_chunk_size"}
        return {k: v for k, v in asdict(self).items() if k not in ignore}


@dataclass
class TrainData:
    """Training queries and the negative pool, as parallel arrays.

    ``target_idx`` / ``reference_idx`` index ``pool_ids`` (-1 when the reference is not
    in the pool). ``query_groups`` / ``pool_groups`` restrict negatives to the same
    group (FashionIQ category); ``None`` means one pool for all.
    """

    query_ids: list[str]
    reference_ids: list[str]
    target_ids: list[str]
    captions_train: list[list[str]]
    caption_eval: list[str]
    edits_color: np.ndarray  # (N,) bool
    edits_shape: np.ndarray  # (N,) bool
    pool_ids: list[str]
    target_idx: np.ndarray  # (N,) int64
    reference_idx: np.ndarray  # (N,) int64
    query_groups: np.ndarray | None = None  # (N,) int64
    pool_groups: np.ndarray | None = None  # (M,) int64

    def __len__(self) -> int:
        return len(self.reference_ids)


@dataclass
class QueryEmbeddings:
    """Composed-query embeddings of a query set: ``q`` (N,P), attribute ``weights`` (N,3)."""

    q: torch.Tensor
    weights: torch.Tensor


@dataclass
class FitResult:
    """What ``fit`` returns: the best checkpoint dict and the per-epoch history."""

    best_checkpoint: dict[str, Any]
    history: list[dict[str, float]]
    mining_summaries: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0


def tokenize(
    tokenizer: Any, texts: Sequence[str], max_len: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise a batch: returns ``input_ids`` and ``attention_mask``, both (B, L)."""
    enc = tokenizer(
        list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt"
    )
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def host_tokens(features: FeatureSource, ids: Sequence[str], pin: bool = False) -> torch.Tensor:
    """Cached ViT tokens for ``ids`` on the host, in their stored dtype (float16): (B, T, D).

    ``pin`` page-locks them so that the copy to a GPU can run asynchronously.
    """
    tokens = torch.from_numpy(np.ascontiguousarray(features.get(list(ids))))
    return tokens.pin_memory() if pin else tokens


def to_device(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tokens -> float32 on ``device``; the cast runs after the copy (half the bytes move)."""
    return tokens.to(device, non_blocking=tokens.is_pinned()).float()


def load_tokens(features: FeatureSource, ids: Sequence[str], device: torch.device) -> torch.Tensor:
    """Cached ViT tokens for ``ids`` as float32 on ``device``: (B, T, D)."""
    return to_device(host_tokens(features, ids), device)


def prefetched(
    features: FeatureSource, batches: Sequence[Sequence[Sequence[str]]], pin: bool
) -> Iterator[list[torch.Tensor]]:
    """Host tokens of each batch's id lists, gathered one batch ahead on a worker thread.

    Training reads every step's reference, target and negative tokens from the
    memory-mapped cache; gathering the next step's while the current one computes keeps
    that host work off the critical path. One thread, one batch ahead: the cache is read
    by one thread at a time and at most two batches of tokens are held.
    """
    if not batches:
        return

    def gather(groups: Sequence[Sequence[str]]) -> list[torch.Tensor]:
        return [host_tokens(features, ids, pin) for ids in groups]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-prefetch") as pool:
        pending = pool.submit(gather, batches[0])
        for k in range(len(batches)):
            ready = pending.result()
            if k + 1 < len(batches):
                pending = pool.submit(gather, batches[k + 1])
            yield ready


@torch.no_grad()
def encode_images(
    model: DQECIR,
    features: FeatureSource,
    image_ids: Sequence[str],
    *,
    batch_size: int = 256,
    device: torch.device | None = None,
    amp_dtype: str | None = "bfloat16",
) -> torch.Tensor:
    """Target/gallery embeddings for ``image_ids``: (M, Q, P) float32 on CPU."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[torch.Tensor] = []
    for start in range(0, len(image_ids), batch_size):
        tokens = load_tokens(features, image_ids[start : start + batch_size], device)
        with autocast(device, amp_dtype):
            emb = model.encode_targets(tokens)
        out.append(emb.float().cpu())
    model.train(was_training)
    if not out:
        raise ValueError("encode_images got no image ids")
    return torch.cat(out)


@torch.no_grad()
def encode_queries(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: Any,
    reference_ids: Sequence[str],
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    max_len: int = 32,
    device: torch.device | None = None,
    amp_dtype: str | None = "bfloat16",
) -> QueryEmbeddings:
    """Composed-query embeddings (N, P) and attribute weights (N, 3), float32 on CPU."""
    if len(reference_ids) != len(texts):
        raise ValueError("reference_ids and texts must have the same length")
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    qs: list[torch.Tensor] = []
    ws: list[torch.Tensor] = []
    for start in range(0, len(texts), batch_size):
        tokens = load_tokens(features, reference_ids[start : start + batch_size], device)
        ids, mask = tokenize(tokenizer, texts[start : start + batch_size], max_len, device)
        with autocast(device, amp_dtype):
            out = model.encode_queries(tokens, ids, mask)
        qs.append(out.q.float().cpu())
        ws.append(out.weights.float().cpu())
    model.train(was_training)
    return QueryEmbeddings(q=torch.cat(qs), weights=torch.cat(ws))


def encode_for_mining(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: Any,
    data: TrainData,
    *,
    batch_size: int = 256,
    max_len: int = 32,
    amp_dtype: str | None = "bfloat16",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training queries (N, P) and the pool (M, Q, P) as ``model`` embeds them now.

    Queries use their evaluation caption (deterministic) so a refresh does not depend on
    which random caption form an epoch drew.
    """
    device = next(model.parameters()).device
    pool = encode_images(model, features, data.pool_ids, batch_size=batch_size, device=device, amp_dtype=amp_dtype)
    queries = encode_queries(
        model, features, tokenizer, data.reference_ids, data.caption_eval,
        batch_size=batch_size, max_len=max_len, device=device, amp_dtype=amp_dtype,
    )
    return queries.q, pool


def mine_from_embeddings(
    queries: torch.Tensor, pool: torch.Tensor, data: TrainData, mining: MiningConfig, device: torch.device
) -> MiningResult:
    """``mine_negatives`` for ``data``'s targets, references and groups."""
    return mine_negatives(
        queries.to(device),
        pool.to(device),
        torch.as_tensor(data.target_idx),
        torch.as_tensor(data.reference_idx),
        mining,
        query_groups=None if data.query_groups is None else torch.as_tensor(data.query_groups),
        pool_groups=None if data.pool_groups is None else torch.as_tensor(data.pool_groups),
    )


def mine_with_model(
    model: DQECIR,
    features: FeatureSource,
    tokenizer: Any,
    data: TrainData,
    mining: MiningConfig,
    *,
    batch_size: int = 256,
    max_len: int = 32,
    amp_dtype: str | None = "bfloat16",
) -> MiningResult:
    """Encode the pool and the training queries with ``model`` and mine negatives."""
    queries, pool = encode_for_mining(
        model, features, tokenizer, data, batch_size=batch_size, max_len=max_len, amp_dtype=amp_dtype
    )
    return mine_from_embeddings(queries, pool, data, mining, next(model.parameters()).device)


def mining_to_state(result: MiningResult) -> dict[str, Any]:
    """A ``weights_only``-safe dict of a mining result (arrays become tensors)."""
    out: dict[str, Any] = {}
    for f in fields(result):
        v = getattr(result, f.name)
        out[f.name] = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else (
            list(v) if isinstance(v, tuple) else v
        )
    return out


def mining_from_state(state: dict[str, Any]) -> MiningResult:
    """Inverse of ``mining_to_state``."""
    kwargs = {
        k: v.numpy() if isinstance(v, torch.Tensor) else (tuple(v) if isinstance(v, list) else v)
        for k, v in state.items()
    }
    return MiningResult(**kwargs)


def random_negatives(data: TrainData, rng: np.random.Generator) -> np.ndarray:
    """One uniform negative per query from its (group's) pool, never target or reference."""
    n_pool = len(data.pool_ids)
    if data.pool_groups is None or data.query_groups is None:
        members = {0: np.arange(n_pool)}
        groups = np.zeros(len(data), dtype=np.int64)
    else:
        members = {int(g): np.flatnonzero(data.pool_groups == g) for g in np.unique(data.pool_groups)}
        groups = data.query_groups
    out = np.empty(len(data), dtype=np.int64)
    for i in range(len(data)):
        candidates = members[int(groups[i])]
        if len(candidates) < 3:
            raise ValueError(f"query {i}: its negative pool has {len(candidates)} images (< 3)")
        while True:
            pick = int(candidates[rng.integers(len(candidates))])
            if pick != data.target_idx[i] and pick != data.reference_idx[i]:
                out[i] = pick
                break
    return out


def lr_lambda(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup then cosine decay to ``min_ratio`` of the peak learning rate."""

    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return fn


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, query tokens and the temperature."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "query_tokens" in name else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
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
    ) -> tuple[QueryOutput, torch.Tensor, torch.Tensor | None]:
        out = self.model.encode_queries(reference_tokens, input_ids, attention_mask)
        target = self.model.encode_targets(target_tokens)
        negative = None if negative_tokens is None else self.model.encode_targets(negative_tokens)
        return out, target, negative


def _state_to_cpu(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fit(
    model: DQECIR,
    loss_fn: nn.Module,
    tokenizer: Any,
    features: FeatureSource,
    data: TrainData,
    cfg: TrainConfig,
    mining: MiningConfig,
    validate: Callable[[DQECIR], dict[str, float]],
    *,
    backbone_meta: dict[str, str],
    initial_mining: MiningResult | None = None,
    selection_metric: str = "avg",
    stop_after_epochs: int | None = None,
    distributed: Distributed = SINGLE,
) -> FitResult:
    """Train ``model`` on cached ViT tokens and return the best checkpoint and history.

    Args:
        model: the DQE-CIR module (trainable parts only; the ViT is not in it).
        loss_fn: ``DQELoss``; called as ``loss_fn(model, out, tgt, neg, color, shape)``.
        tokenizer: the backbone's tokenizer.
        features: cached ViT tokens by image id.
        data: training queries and pool.
        cfg: the recipe.
        mining: negative-mining settings used at every refresh.
        validate: returns the validation metrics of the current model (eval protocol).
        backbone_meta: ``{"key": ..., "name": ...}``; stored in, and checked against, checkpoints.
        initial_mining: negatives mined before training (the negative_mining pipeline);
            used for epoch 0 instead of mining again.
        selection_metric: validation key that picks the best epoch (higher is better).
        stop_after_epochs: stop (as if killed) after this many epochs of this call; tests
            use it to prove that resuming gives the same result.
        distributed: this process's rank under ``torchrun``. With more than one rank
            the model is wrapped in DistributedDataParallel and each rank trains on a
            slice of every global batch (``cfg.batch_size`` is the global batch); rank
            0 alone mines, validates and writes checkpoints and broadcasts what the
            others need. ``run_dir`` must be on a filesystem every rank can read.

    Returns:
        FitResult with the best checkpoint dict (weights, config, backbone, metrics).
    """
    device = distributed.setup(cfg.device)
    rank, world = distributed.rank, distributed.world_size
    main_rank = distributed.is_main
    torch.manual_seed(cfg.seed + rank)
    model.to(device)
    model.train()
    step_module: nn.Module = TrainStep(model)
    if distributed.enabled:
        # static_graph: the same parameters take part in every step, and ablations leave
        # some unused for the whole run (the attribute heads without weights and margins)
        step_module = DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None, static_graph=True
        )
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
    amp = cfg.amp_dtype
    run_dir = Path(cfg.run_dir) if cfg.run_dir else None
    history: list[dict[str, float]] = []
    mining_summaries: list[dict[str, float]] = []
    best_score = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    best_metrics: dict[str, float] = {}
    best_epoch = -1
    current: MiningResult | None = None
    start_epoch = 0

    last_path = run_dir / "last.pt" if run_dir else None
    best_path = run_dir / "best.pt" if run_dir else None
    if cfg.resume and last_path is not None and last_path.exists():
        ckpt = load_torch(last_path)
        _check_compatible(ckpt, cfg, backbone_meta, last_path)
        model.load_state_dict(ckpt["model"], strict=True)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch = int(ckpt["epoch"])
        history = list(ckpt["history"])
        mining_summaries = list(ckpt["mining_summaries"])
        best_score = float(ckpt["best_score"])
        best_epoch = int(ckpt["best_epoch"])
        if ckpt.get("mining") is not None:
            current = mining_from_state(ckpt["mining"])
        if best_path is not None and best_path.exists():
            best = load_torch(best_path)
            best_state, best_metrics = best["model"], dict(best["metrics"])
        restore_rng_state(ckpt["rng"])
        if rank:  # the checkpoint holds rank 0's generators; keep dropout streams distinct
            torch.manual_seed(cfg.seed + 7919 * rank + start_epoch)
        logger.info("resumed training from %s at epoch %d", last_path, start_epoch)

    if distributed.broadcast(start_epoch) != start_epoch:
        raise RuntimeError(
            f"rank {rank} would resume at epoch {start_epoch} but rank 0 would not: every rank must "
            f"see the same {last_path} (put training.run_dir on a shared file system)"
        )
    refresh = set(refresh_epochs(cfg.epochs, cfg.refresh_interval)) if cfg.negatives == "mined" else set()
    loss_names = ("loss", "main", "color_margin", "shape_margin")
    epochs_run = 0
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        epoch_start = time.perf_counter()
        mining_seconds = 0.0
        # -- negatives, order and captions for this epoch (rank 0 decides, all ranks use) --
        if main_rank:
            rng = np.random.default_rng([cfg.seed, epoch])
            if cfg.negatives == "mined":
                if epoch == 0 and cfg.initial_negatives == "model":
                    t0 = time.perf_counter()
                    current = initial_mining or mine_with_model(
                        model, features, tokenizer, data, mining, max_len=cfg.max_text_len, amp_dtype=amp
                    )
                    mining_seconds = time.perf_counter() - t0
                    mining_summaries.append({"epoch": float(epoch), "seconds": mining_seconds, **current.summary()})
                elif epoch in refresh:
                    t0 = time.perf_counter()
                    current = mine_with_model(
                        model, features, tokenizer, data, mining, max_len=cfg.max_text_len, amp_dtype=amp
                    )
                    mining_seconds = time.perf_counter() - t0
                    mining_summaries.append({"epoch": float(epoch), "seconds": mining_seconds, **current.summary()})
                    logger.info("epoch %d: refreshed negatives in %.2fs", epoch, mining_seconds)
            if cfg.negatives == "random" or (cfg.negatives == "mined" and current is None):
                negatives = random_negatives(data, rng)  # QuRe: random before the first refresh
            elif cfg.negatives == "mined":
                assert current is not None
                negatives = sample_negatives(current, rng)
            else:
                negatives = None

            order = rng.permutation(len(data))
            if cfg.caption_form == "random":
                texts = [forms[int(rng.integers(len(forms)))] for forms in data.captions_train]
            else:
                texts = list(data.caption_eval)
            plan = (negatives, order, texts)
        else:
            plan = None
        negatives, order, texts = distributed.broadcast(plan)

        # -- one epoch ----------------------------------------------------------------------
        model.train()
        sums = dict.fromkeys(loss_names, 0.0)
        train_start = time.perf_counter()
        skipped = 0
        steps: list[tuple[np.ndarray, np.ndarray, list[int], int]] = []  # global, local rows, sizes, offset
        for step_start in range(0, len(order), cfg.batch_size):
            idx = order[step_start : step_start + cfg.batch_size]
            sizes = [len(part) for part in np.array_split(idx, world)]
            if min(sizes) == 0:  # a tail batch smaller than the world: every rank skips it
                skipped += len(idx)
                continue
            offset = sum(sizes[:rank])
            steps.append((idx, idx[offset : offset + sizes[rank]], sizes, offset))
        id_lists = [
            [[data.reference_ids[i] for i in local], [data.target_ids[i] for i in local]]
            + ([] if negatives is None else [[data.pool_ids[j] for j in negatives[local]]])
            for _, local, _, _ in steps
        ]
        tokens_per_step = prefetched(features, id_lists, pin=device.type == "cuda")
        for (idx, local, sizes, offset), host in zip(steps, tokens_per_step, strict=True):
            ref, tgt = to_device(host[0], device), to_device(host[1], device)
            neg = to_device(host[2], device) if negatives is not None else None
            ids, mask = tokenize(tokenizer, [texts[i] for i in local], cfg.max_text_len, device)
            color = torch.as_tensor(data.edits_color[local], device=device)
            shape = torch.as_tensor(data.edits_shape[local], device=device)
            target_index = torch.as_tensor(data.target_idx[local], device=device)
            negative_index = None if negatives is None else torch.as_tensor(negatives[local], device=device)
            with autocast(device, amp):
                out, tgt_emb, neg_emb = step_module(ref, ids, mask, tgt, neg)
                global_batch = None
                if distributed.enabled:
                    global_batch = GlobalBatch(
                        targets=distributed.gather_rows(tgt_emb, sizes, differentiable=True),
                        negatives=None if neg_emb is None else distributed.gather_rows(neg_emb, sizes, differentiable=True),
                        target_index=torch.as_tensor(data.target_idx[idx], device=device),
                        negative_index=None if negatives is None else torch.as_tensor(negatives[idx], device=device),
                        offset=offset,
                        n_color=int(data.edits_color[idx].sum()),
                        n_shape=int(data.edits_shape[idx].sum()),
                        world_size=world,
                    )
                terms = loss_fn(
                    model, out, tgt_emb, neg_emb, color, shape,
                    target_index=target_index, negative_index=negative_index, global_batch=global_batch,
                )
            optimizer.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            values = distributed.sum(torch.stack([terms[name].detach().float() for name in loss_names])) / world
            for name, value in zip(loss_names, values.tolist(), strict=True):
                sums[name] += value * len(idx)
        train_seconds = time.perf_counter() - train_start

        metrics = distributed.broadcast(validate(model) if main_rank else None)
        if skipped:
            logger.warning("epoch %d: skipped %d triplets in a batch smaller than the world size", epoch, skipped)
        record: dict[str, float] = {
            "epoch": float(epoch),
            **{f"train/{k}": v / max(1, len(data) - skipped) for k, v in sums.items()},
            "train/lr": float(scheduler.get_last_lr()[0]),
            "train/temperature": float(model.temperature().detach()),
            "train/triplets_per_s": len(data) / max(train_seconds, 1e-9),
            "train/epoch_seconds": time.perf_counter() - epoch_start,
            "train/mining_seconds": mining_seconds,
            **{f"val/{k}": float(v) for k, v in metrics.items()},
        }
        history.append(record)
        score = float(metrics[selection_metric])
        logger.info(
            "epoch %d/%d loss %.4f val %s %.2f (%.1f triplets/s)",
            epoch + 1, cfg.epochs, record["train/loss"], selection_metric, score,
            record["train/triplets_per_s"],
        )
        if score > best_score:
            best_score, best_epoch = score, epoch
            best_state, best_metrics = _state_to_cpu(model), dict(metrics)
            if best_path is not None and main_rank:
                atomic_torch_save(best_path, {"model": best_state, "metrics": best_metrics, "epoch": epoch})
        if last_path is not None and main_rank:
            atomic_torch_save(
                last_path,
                {
                    "model": _state_to_cpu(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": capture_rng_state(),
                    "epoch": epoch + 1,
                    "config": cfg.fingerprint(),
                    "backbone": dict(backbone_meta),
                    "history": history,
                    "mining_summaries": mining_summaries,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "mining": None if current is None else mining_to_state(current),
                },
            )
        epochs_run += 1

    if best_state is None:
        raise RuntimeError("training ran no epoch: check training.epochs and the resume state")
    checkpoint = {
        "model": best_state,
        "epoch": best_epoch,
        "config": cfg.fingerprint(),
        "backbone": dict(backbone_meta),
        "metrics": best_metrics,
    }
    return FitResult(
        best_checkpoint=checkpoint,
        history=history,
        mining_summaries=mining_summaries,
        resumed_from_epoch=start_epoch,
    )


def _check_compatible(
    ckpt: dict[str, Any], cfg: TrainConfig, backbone_meta: dict[str, str], path: Path
) -> None:
    """Refuse to resume a run made with another backbone or recipe."""
    problems = []
    if ckpt.get("backbone", {}).get("key") != backbone_meta.get("key"):
        problems.append(
            f"backbone key {ckpt.get('backbone', {}).get('key')!r} != {backbone_meta.get('key')!r}"
        )
    saved = ckpt.get("config", {})
    for k, v in cfg.fingerprint().items():
        if saved.get(k) != v:
            problems.append(f"training.{k}: checkpoint {saved.get(k)!r} != config {v!r}")
    if problems:
        raise CheckpointMismatchError(
            f"cannot resume from {path}: " + "; ".join(problems)
            + ". Set training.resume: false or point training.run_dir at a new folder."
        )
