"""LAVIS BLIP-2 names and shapes: which LAVIS tensor becomes which tensor of the
project's ``Blip2ForImageTextRetrieval``, which LAVIS tensors are deliberately not loaded
(and why), and the model configuration the tensors' shapes imply.

Written from LAVIS's module definitions (clip_vit.py, eva_vit.py, blip2.py,
blip2_qformer.py, Qformer.py); the vision-file keys carry LAVIS's ``visual_encoder.``
prefix here. Summary table: docs/real_data.md §11.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

from .lavis_tower import CLIP_TOWER, LN_VISION_EPS, MARKER, LavisCheckpointError

EVA_TOWER = "eva_vit_g"
EVA_LN_EPS = 1e-6  # eva_vit.py: partial(nn.LayerNorm, eps=1e-6)
REPORT_FILE = "lavis_conversion.json"  # the conversion report in a converted folder


@dataclass(frozen=True)
class Arch:
    """One LAVIS ``blip2`` model type: its vision tower and how many blocks LAVIS keeps."""

    tower: str
    default_depth: int  # what current LAVIS builds (see docs/real_data.md §11)
    vision_heads: int  # not readable from the shapes; 16 for both (1408 / 88, 1024 / 64)


ARCHS: dict[str, Arch] = {
    "pretrain": Arch(EVA_TOWER, 39, 16),  # blip2_pretrained.pth + eva_vit_g.pth
    "pretrain_vitL": Arch(CLIP_TOWER, 23, 16),  # blip2_pretrained_vitL.pth + clip_vit_L.pth
}


# --------------------------------------------------------------------------- key maps

Combine = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def _same(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return ts[0]


def _third(index: int, ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Row block ``index`` (q, k, v) of ``nn.MultiheadAttention``'s packed in_proj."""
    return ts[0].chunk(3, dim=0)[index]


def _qkv_bias(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """EVA's q_bias and v_bias; the key has none (a key bias cannot change the softmax)."""
    q, v = ts
    return torch.cat((q, torch.zeros_like(q), v))


@dataclass(frozen=True)
class Rule:
    """A target tensor made from LAVIS tensors ``sources`` by ``combine``."""

    sources: tuple[str, ...]
    combine: Combine = _same


KeyMap = dict[str, Rule]  # target key -> rule


def _pair(m: KeyMap, src: str, dst: str) -> None:
    for p in ("weight", "bias"):
        m[f"{dst}.{p}"] = Rule((f"{src}.{p}",))


def clip_vision_map(depth: int) -> KeyMap:
    """LAVIS clip_vit.VisionTransformer (+ ``ln_vision``) -> :class:`LavisClipVision`."""
    s, d = "visual_encoder.", "vision_model.clip."
    m: KeyMap = {
        d + "embeddings.patch_embedding.weight": Rule((s + "conv1.weight",)),
        d + "embeddings.class_embedding": Rule((s + "class_embedding",)),
        d + "embeddings.position_embedding.weight": Rule((s + "positional_embedding",)),
    }
    _pair(m, s + "ln_pre", d + "pre_layrnorm")
    for i in range(depth):
        src, dst = f"{s}transformer.resblocks.{i}.", f"{d}encoder.layers.{i}."
        for j, name in enumerate("qkv"):
            for p in ("weight", "bias"):
                rule = Rule((f"{src}attn.in_proj_{p}",), partial(_third, j))
                m[f"{dst}self_attn.{name}_proj.{p}"] = rule
        for a, b in (
            ("attn.out_proj", "self_attn.out_proj"),
            ("ln_1", "layer_norm1"),
            ("ln_2", "layer_norm2"),
            ("mlp.c_fc", "mlp.fc1"),
            ("mlp.c_proj", "mlp.fc2"),
        ):
            _pair(m, src + a, dst + b)
    _pair(m, "ln_vision", "vision_model.ln_vision")
    return m


def eva_vision_map(depth: int) -> KeyMap:
    """LAVIS eva_vit.VisionTransformer (+ ``ln_vision``) -> transformers Blip2VisionModel."""
    s, d = "visual_encoder.", "vision_model."
    m: KeyMap = {
        d + "embeddings.class_embedding": Rule((s + "cls_token",)),
        d + "embeddings.position_embedding": Rule((s + "pos_embed",)),
    }
    _pair(m, s + "patch_embed.proj", d + "embeddings.patch_embedding")
    for i in range(depth):
        src, dst = f"{s}blocks.{i}.", f"{d}encoder.layers.{i}."
        m[dst + "self_attn.qkv.weight"] = Rule((src + "attn.qkv.weight",))
        m[dst + "self_attn.qkv.bias"] = Rule((src + "attn.q_bias", src + "attn.v_bias"), _qkv_bias)
        for a, b in (
            ("attn.proj", "self_attn.projection"),
            ("norm1", "layer_norm1"),
            ("norm2", "layer_norm2"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ):
            _pair(m, src + a, dst + b)
    _pair(m, "ln_vision", d + "post_layernorm")
    return m


_QFORMER_FFN = (
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
    "intermediate_query.dense",
    "output_query.dense",
    "output_query.LayerNorm",
)


def qformer_map(num_layers: int, cross_layers: set[int]) -> KeyMap:
    """LAVIS Blip2Qformer (Qformer.bert, query tokens, heads) -> the retrieval model."""
    e = "Qformer.bert.embeddings."
    m: KeyMap = {
        "query_tokens": Rule(("query_tokens",)),
        "embeddings.word_embeddings.weight": Rule((e + "word_embeddings.weight",)),
        "embeddings.position_embeddings.weight": Rule((e + "position_embeddings.weight",)),
    }
    _pair(m, e + "LayerNorm", "qformer.layernorm")
    for i in range(num_layers):
        src, dst = f"Qformer.bert.encoder.layer.{i}.", f"qformer.encoder.layer.{i}."
        for part in ("attention", "crossattention") if i in cross_layers else ("attention",):
            for x in ("query", "key", "value"):
                _pair(m, f"{src}{part}.self.{x}", f"{dst}{part}.attention.{x}")
            for x in ("dense", "LayerNorm"):
                _pair(m, f"{src}{part}.output.{x}", f"{dst}{part}.output.{x}")
        for x in _QFORMER_FFN:
            _pair(m, src + x, dst + x)
    for a, b in (
        ("vision_proj", "vision_projection"),
        ("text_proj", "text_projection"),
        ("itm_head", "itm_head"),
    ):
        _pair(m, a, b)
    return m


_BLOCK = {
    CLIP_TOWER: r"visual_encoder\.transformer\.resblocks\.(\d+)\.",
    EVA_TOWER: r"visual_encoder\.blocks\.(\d+)\.",
}
_TOWER_EXTRAS = {
    CLIP_TOWER: (
        r"visual_encoder\.(ln_post\.(weight|bias)|proj)",
        "CLIP's ln_post / proj: LAVIS's VisionTransformer has neither (BLIP-2 puts "
        "ln_vision on the last kept block)",
    ),
    EVA_TOWER: (
        r"visual_encoder\.(norm|fc_norm|head)\.(weight|bias)",
        "EVA's final norm / classifier: commented out in LAVIS's eva_vit.py",
    ),
}
_ALWAYS_UNUSED = (
    (
        r"Qformer\.cls\..+",
        "BERT LM head (stage-1 caption loss); Blip2ForImageTextRetrieval has none",
    ),
    (r"temp", "ITC softmax temperature: the retrieval model has none; recorded in " + REPORT_FILE),
)
_POSITION_IDS = "Qformer.bert.embeddings.position_ids"


def unused_reason(name: str, tower: str, depth: int, tensor: torch.Tensor) -> str | None:
    """Why a LAVIS tensor is deliberately not loaded, or None (then it is unexpected)."""
    block = re.match(_BLOCK[tower], name)
    if block is not None and int(block.group(1)) >= depth:
        return f"vision block {block.group(1)}: the depth setting keeps blocks 0..{depth - 1}"
    pattern, reason = _TOWER_EXTRAS[tower]
    if re.fullmatch(pattern, name):
        return reason
    for pattern, reason in _ALWAYS_UNUSED:
        if re.fullmatch(pattern, name):
            return reason
    if name == _POSITION_IDS:
        if not torch.equal(tensor.flatten(), torch.arange(tensor.numel())):
            raise LavisCheckpointError(f"{name} is not arange({tensor.numel()})")
        return "buffer arange(max_positions) (checked): transformers rebuilds it"
    return None


# --------------------------------------------------------------------------- configuration


def _tensor(t: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in t:
        raise LavisCheckpointError(f"missing key {name}")
    return t[name]


def _grid(t: dict[str, torch.Tensor], pos: str, patch: str) -> tuple[int, int]:
    """(image size, patch size) from the position table and the patch conv."""
    p = int(_tensor(t, patch).shape[-1])
    tokens = int(_tensor(t, pos).shape[-2])
    side = round((tokens - 1) ** 0.5)
    if side * side != tokens - 1:
        raise LavisCheckpointError(f"{pos}: {tokens} positions is not 1 + a square grid")
    return side * p, p


def vision_config(
    t: dict[str, torch.Tensor], tower: str, depth: int, heads: int
) -> Blip2VisionConfig:
    """The vision tower's dimensions, read from the tensors (heads cannot be read)."""
    v = "visual_encoder."
    if tower == CLIP_TOWER:
        image, patch = _grid(t, v + "positional_embedding", v + "conv1.weight")
        mlp = _tensor(t, v + "transformer.resblocks.0.mlp.c_fc.weight")
        act, eps = "quick_gelu", LN_VISION_EPS
    else:
        image, patch = _grid(t, v + "pos_embed", v + "patch_embed.proj.weight")
        mlp = _tensor(t, v + "blocks.0.mlp.fc1.weight")
        act, eps = "gelu", EVA_LN_EPS
    width = int(mlp.shape[1])
    if depth < 1 or width % heads:
        raise LavisCheckpointError(f"depth {depth} / {heads} heads do not fit width {width}")
    return Blip2VisionConfig(
        hidden_size=width,
        intermediate_size=int(mlp.shape[0]),
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=image,
        patch_size=patch,
        hidden_act=act,
        layer_norm_eps=eps,
        qkv_bias=tower == EVA_TOWER,
    )


def qformer_layout(t: dict[str, torch.Tensor]) -> tuple[int, set[int], int]:
    """(layers, layers with cross-attention, cross-attention frequency) of the Q-Former."""
    found = [re.match(r"Qformer\.bert\.encoder\.layer\.(\d+)\.(\w+)", k) for k in t]
    layers = {int(m.group(1)) for m in found if m}
    cross = {int(m.group(1)) for m in found if m and m.group(2) == "crossattention"}
    if not layers or not cross:
        raise LavisCheckpointError("missing key Qformer.bert.encoder.layer.0.crossattention.*")
    n = max(layers) + 1
    for freq in range(1, n + 1):  # transformers: layer i cross-attends iff i % freq == 0
        if cross == {i for i in range(n) if i % freq == 0}:
            return n, cross, freq
    raise LavisCheckpointError(
        f"Q-Former cross-attention layers {sorted(cross)} are not every k-th"
    )


def blip2_config(
    t: dict[str, torch.Tensor], arch: Arch, depth: int, vision_heads: int, qformer_heads: int
) -> Blip2Config:
    """The Blip2Config of the LAVIS tensors ``t`` (vision file keys under visual_encoder.)."""
    vision = vision_config(t, arch.tower, depth, vision_heads)
    layers, _, freq = qformer_layout(t)
    e = "Qformer.bert.embeddings."
    words = _tensor(t, e + "word_embeddings.weight")
    ffn = _tensor(t, "Qformer.bert.encoder.layer.0.intermediate.dense.weight")
    if int(words.shape[1]) % qformer_heads:
        raise LavisCheckpointError(
            f"{qformer_heads} Q-Former heads do not fit width {words.shape[1]}"
        )
    qformer = Blip2QFormerConfig(
        vocab_size=int(words.shape[0]),
        hidden_size=int(words.shape[1]),
        num_hidden_layers=layers,
        num_attention_heads=qformer_heads,
        intermediate_size=int(ffn.shape[0]),
        max_position_embeddings=int(_tensor(t, e + "position_embeddings.weight").shape[0]),
        cross_attention_frequency=freq,
        encoder_hidden_size=vision.hidden_size,
        use_qformer_text_input=True,
    )
    extra = {MARKER: {"tower": CLIP_TOWER, "depth": depth}} if arch.tower == CLIP_TOWER else {}
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        num_query_tokens=int(_tensor(t, "query_tokens").shape[1]),
        image_text_hidden_size=int(_tensor(t, "vision_proj.weight").shape[0]),
        **extra,
    )
