"""Build the trainable model and its loss from configuration blocks, or from a checkpoint."""

from __future__ import annotations

from typing import Any

import torch

from dqe_cir_pipeline.model.backbone import Backbone
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.dqe import DQECIR, DQEConfig
from dqe_cir_pipeline.model.losses import DQELoss, LossConfig
from dqe_cir_pipeline.model.state import CheckpointMismatchError, load_trainable_state


def build_model(backbone: Backbone, cfg: DQEConfig, seed: int = 0, device: str = "auto") -> DQECIR:
    """The DQE-CIR module on the backbone's Q-Former, seeded for reproducible heads."""
    torch.manual_seed(seed)
    return DQECIR(backbone.model, cfg).to(resolve_device(device))


def build_untrained_model(
    backbone: Backbone, cfg: DQEConfig, seed: int = 0, device: str = "auto"
) -> DQECIR:
    """DQE-CIR with its Q-Former side re-initialised: the floor below zero-shot."""
    model = build_model(backbone, cfg, seed, device)
    init = backbone.model._init_weights  # the architecture's own initialisation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for part in (
            model.embeddings,
            model.qformer,
            model.vision_projection,
            model.text_projection,
        ):
            part.apply(init)
        std = backbone.model.config.qformer_config.initializer_range
        torch.nn.init.normal_(model.query_tokens, std=std)  # HF starts them at zeros
    return model


def build_loss(cfg: LossConfig) -> DQELoss:
    return DQELoss(cfg)


def model_from_checkpoint(
    checkpoint: dict[str, Any], backbone: Backbone, device: str = "auto"
) -> DQECIR:
    """The trained model of a checkpoint; CheckpointMismatchError for another backbone or shape."""
    saved = checkpoint.get("backbone", {})
    if saved.get("key") != backbone.key:
        raise CheckpointMismatchError(
            f"checkpoint was trained on backbone {saved.get('key')!r} ({saved.get('name')}), "
            f"the configured backbone is {backbone.key!r} ({backbone.name})"
        )
    config = checkpoint.get("config", {})
    model = build_model(
        backbone, DQEConfig(**config.get("model", {})), checkpoint_seed(checkpoint), device
    )
    # strict: any missing, unexpected or misshapen weight is a clear error
    load_trainable_state(model, checkpoint, backbone.key, {})
    return model


def checkpoint_seed(checkpoint: dict[str, Any]) -> int:
    """The training seed a checkpoint was made with (its untrained model uses it too)."""
    return int(checkpoint.get("config", {}).get("loop", {}).get("seed", 0))
