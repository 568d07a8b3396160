"""A tiny backbone spec and a random training/validation set for loop-level tests.

Used in-process by ``tests/model`` and, under ``torchrun``, by ``ddp_worker.py``.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dqe_cir_pipeline.model.backbone import Backbone, TinyBackboneSpec, build_tiny_backbone
from dqe_cir_pipeline.model.config import RuntimeConfig
from dqe_cir_pipeline.model.data import TrainData
from dqe_cir_pipeline.model.distributed import SINGLE, Distributed
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate
from dqe_cir_pipeline.model.extract import MemoryFeatures
from dqe_cir_pipeline.model.factory import build_model
from dqe_cir_pipeline.model.negatives import MiningConfig
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol
from dqe_cir_pipeline.model.run_state import FitResult
from dqe_cir_pipeline.model.train import FitData, fit
from dqe_cir_pipeline.model.train_config import TrainingConfig

#: The generated benchmark's protocol (its validation set is labelled ``synthetic``).
PROTOCOL = BenchmarkProtocol(subset_ks=CIRR_SUBSET_KS, edit_type_breakdown=True, scene_labels=True)
WORDS = ["red", "blue", "green", "circle", "square", "star", "make", "the", "a", "into", "turn"]
SPEC = TinyBackboneSpec(
    image_size=32,
    vision_layers=1,
    qformer_layers=1,
    num_query_tokens=4,
    projection_dim=16,
    qformer_hidden=32,
    qformer_mlp=64,
    vision_hidden=32,
    vision_mlp=64,
    vision_heads=2,
    qformer_heads=2,
    vocab_size=200,
    # 32 text positions: the data-parallel tests' tolerances (1e-4) were measured with
    # this init; with 64 the float-order drift of a margin term reaches ~3e-4 in 2 epochs
    max_position_embeddings=32,
)


def tiny_backbone(out_dir: Path) -> Backbone:
    """Build (or reload, bit for bit) the tiny backbone in ``out_dir``."""
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(WORDS, 5)) for _ in range(50)]
    return build_tiny_backbone(SPEC, captions, out_dir)


def make_data(
    n_pool: int = 40, n_query: int = 24, seed: int = 0
) -> tuple[TrainData, MemoryFeatures, EvalSet]:
    rng = np.random.default_rng(seed)
    ids = [f"img{i}" for i in range(n_pool)]
    tokens = rng.standard_normal((n_pool, 17, SPEC.vision_hidden)).astype(np.float16)
    ref = rng.integers(0, n_pool, n_query)
    tgt = (ref + 1 + rng.integers(0, n_pool - 1, n_query)) % n_pool
    texts = [" ".join(rng.choice(WORDS, 4)) for _ in range(n_query)]
    data = TrainData(
        query_ids=[str(i) for i in range(n_query)],
        reference_ids=[ids[i] for i in ref],
        target_ids=[ids[i] for i in tgt],
        captions_train=[[t, t + " now"] for t in texts],
        caption_eval=texts,
        edits_color=rng.random(n_query) < 0.5,
        edits_shape=rng.random(n_query) < 0.5,
        pool_ids=ids,
        target_idx=tgt.astype(np.int64),
        reference_idx=ref.astype(np.int64),
    )
    members = [
        [ids[r], ids[t]] + [ids[(t + k) % n_pool] for k in range(2, 6)]
        for r, t in zip(ref, tgt, strict=True)
    ]
    val = EvalSet(
        dataset="synthetic",
        split="val",
        query_ids=data.query_ids,
        reference_ids=data.reference_ids,
        target_ids=list(data.target_ids),
        texts=texts,
        edit_types=["color"] * n_query,
        categories=["all"] * n_query,
        subset_members=members,
        gallery_ids=ids,
        gallery_categories=["all"] * n_pool,
    )
    return data, MemoryFeatures(ids, tokens), val


def run_fit(
    backbone: Backbone,
    run_dir: Path | None,
    stop: int | None = None,
    *,
    n_query: int = 24,
    no_dropout: bool = False,
    distributed: Distributed = SINGLE,
    data: tuple[TrainData, MemoryFeatures, EvalSet] | None = None,
    **over: object,
) -> FitResult:
    """Three epochs (unless overridden) of the training loop on ``make_data`` (or on
    ``data``: training set, features, validation set)."""
    data, feats, val = data or make_data(n_query=n_query)
    params: dict[str, object] = dict(
        epochs=3, batch_size=8, lr=1e-3, warmup_steps=2, refresh_interval=1
    )
    params.update(over)
    cfg = training_config(run_dir=str(run_dir) if run_dir else None, **params)
    model = build_model(backbone, cfg.model, cfg.loop.seed, "cpu")
    if no_dropout:  # data-parallel equivalence is exact only without random masks
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
            if isinstance(getattr(module, "attention_dropout", None), float):
                module.attention_dropout = 0.0  # HF attention passes it to the kernel
    mining = MiningConfig(zone_quantile=0.2, epsilon=0.0)
    return fit(
        cfg,
        FitData(
            data,
            feats,
            lambda m: (
                evaluate(m, feats, backbone.tokenizer, val, ks=(1, 5), protocol=PROTOCOL).metrics
            ),
        ),
        model,
        backbone,
        mining,
        runtime=RuntimeConfig(device="cpu"),
        stop_after_epochs=stop,
        distributed=distributed,
    )


def training_config(**flat: object) -> TrainingConfig:
    """A ``TrainingConfig`` from flat keys (``lr=...``, ``epochs=...``): each key goes to the
    one block (model, loss, optim, loop) that has a field of that name."""
    blocks: dict[str, dict[str, object]] = {"model": {}, "loss": {}, "optim": {}, "loop": {}}
    defaults = TrainingConfig()
    for key, value in flat.items():
        owner = [
            name for name in blocks if key in {f.name for f in fields(getattr(defaults, name))}
        ]
        if len(owner) != 1:
            raise KeyError(f"{key!r} is a field of {owner or 'no'} training block")
        blocks[owner[0]][key] = value
    return TrainingConfig(**blocks)  # type: ignore[arg-type]


def save_result(result: FitResult, path: Path) -> None:
    torch.save({"history": result.history, "model": result.best_checkpoint["model"]}, path)
