"""The CLIP ViT-L tower of LAVIS's BLIP-2 ``pretrain_vitL`` inside a transformers
``Blip2ForImageTextRetrieval``, and loading a folder converted by :mod:`.lavis`.

transformers' Blip2VisionModel has no pre-LayerNorm, so this tower is a CLIPVisionModel
(``pre_layrnorm`` = LAVIS ``ln_pre``) followed by BLIP-2's ``ln_vision``, placed as
``model.vision_model``; the Blip2Config marks it (attribute ``lavis_vision``) and its
vision_config holds the tower's dimensions. Details: docs/real_data.md §11.
"""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2VisionConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
)
from transformers.initialization import no_init_weights
from transformers.modeling_outputs import BaseModelOutputWithPooling

MARKER = "lavis_vision"  # Blip2Config attribute: {"tower": "clip_vit", "depth": N}
CLIP_TOWER = "clip_vit"
LN_VISION_EPS = 1e-5  # LAVIS's ln_vision and CLIP blocks: torch's LayerNorm default


class LavisCheckpointError(RuntimeError):
    """LAVIS weights do not fit the model: every problem line names its key."""


# --------------------------------------------------------------------------- the CLIP tower


class LavisClipVision(nn.Module):
    """LAVIS's CLIP ViT-L as BLIP-2 uses it: ``ln_pre``, the kept blocks (no ``ln_post``),
    then BLIP-2's ``ln_vision``. ``last_hidden_state`` is what the Q-Former attends to."""

    def __init__(self, config: CLIPVisionConfig) -> None:
        super().__init__()
        self.clip = CLIPVisionModel(config)
        # CLIP's post_layernorm only feeds its pooled output, which BLIP-2 never reads.
        self.clip.post_layernorm = nn.Identity()
        self.ln_vision = nn.LayerNorm(config.hidden_size, eps=LN_VISION_EPS)

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> BaseModelOutputWithPooling:
        tokens = self.ln_vision(self.clip(pixel_values=pixel_values).last_hidden_state)
        return BaseModelOutputWithPooling(last_hidden_state=tokens, pooler_output=tokens[:, 0])


def clip_tower(config: Blip2Config) -> dict[str, Any] | None:
    """The CLIP tower marker of a converted ``pretrain_vitL`` config, else None."""
    marker = getattr(config, MARKER, None)
    if not isinstance(marker, dict) or marker.get("tower") != CLIP_TOWER:
        return None
    if int(marker["depth"]) != int(config.vision_config.num_hidden_layers):
        raise LavisCheckpointError(
            f"config {MARKER} depth {marker['depth']} != vision_config.num_hidden_layers "
            f"{config.vision_config.num_hidden_layers}"
        )
    return marker


def _clip_config(vision: Blip2VisionConfig) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_hidden_layers,
        num_attention_heads=vision.num_attention_heads,
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        hidden_act="quick_gelu",
        layer_norm_eps=LN_VISION_EPS,
    )


def retrieval_model(config: Blip2Config, initialise: bool = True) -> Blip2ForImageTextRetrieval:
    """``Blip2ForImageTextRetrieval(config)``, with the CLIP tower when the config marks one.

    ``initialise=False`` skips the random initialisation (the caller loads every weight
    strictly afterwards): no wasted random init of a ViT-g (tens of seconds on a CPU).
    """
    with nullcontext() if initialise else no_init_weights():
        model = Blip2ForImageTextRetrieval(config)
        if clip_tower(config) is not None:
            model.vision_model = LavisClipVision(_clip_config(config.vision_config))
    return model


def is_clip_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a converted ``pretrain_vitL`` model (CLIP tower marker)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    marker = config.get(MARKER)
    return isinstance(marker, dict) and marker.get("tower") == CLIP_TOWER


def load_converted(folder: str | os.PathLike[str]) -> Blip2ForImageTextRetrieval:
    """A converted CLIP-tower folder as a float32 model in eval mode, loaded strictly."""
    root = Path(folder)
    model = retrieval_model(Blip2Config.from_pretrained(str(root)), initialise=False)
    index = root / "model.safetensors.index.json"
    if (root / "model.safetensors").is_file():
        state = load_file(str(root / "model.safetensors"))
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {k: v for s in shards for k, v in load_file(str(root / s)).items()}
    else:
        raise LavisCheckpointError(f"{root}: no model.safetensors")
    _load_checked(model, {k: v.float() for k, v in state.items()}, str(root))
    return model.eval()


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)``, with every problem named first."""
    expected = model.state_dict()
    problems = [f"missing key {k}" for k in expected if k not in state]
    problems += [f"unexpected key {k}" for k in state if k not in expected]
    problems += [
        f"shape of {k}: {tuple(v.shape)}, the model has {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise LavisCheckpointError(f"{where}:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
