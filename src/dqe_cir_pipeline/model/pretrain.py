"""BLIP-2 stage-1 pretraining of the tiny backbone's Q-Former side on cached ViT tokens.

ITC and ITM with hard negatives (BLIP-2), plus [ours] fused ITC and a mean-pooled ITC
text side (why: docs/method.md). Shapes: B batch, Q query tokens, L text length, H
Q-Former width, P projection width.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2ForImageTextRetrieval

from dqe_cir_pipeline.model.config import config_block
from dqe_cir_pipeline.model.data import FeatureSource, load_tokens, tokenize
from dqe_cir_pipeline.model.optim import lr_lambda

logger = logging.getLogger(__name__)

TERMS = ("loss", "itc", "itm", "fused_itc")


@config_block
class PretrainConfig:
    """Stage-1 pretraining recipe (``pretraining.train``).

    Attributes:
        warmup_steps: linear warmup; the post-LN Q-Former diverges without it.
        itm_pairs: pairs of the batch that get the ITM and fused ITC passes (their CPU cost).
        fused_itc_weight: [ours] weight of the fused ITC loss; 0 = BLIP-2's two losses.
        held_out: images never trained on, to measure retrieval of their descriptions.
    """

    seed: int = 0
    steps: int = 1000
    batch_size: int = 96
    lr: float = 2.0e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    itm_weight: float = 1.0
    itm_pairs: int = 32
    fused_itc_weight: float = 1.0
    temperature_init: float = 0.07
    held_out: int = 500
    log_every: int = 100


@dataclass
class DescribedImages:
    """The pretraining corpus as the loop needs it: image ids and their descriptions."""

    image_ids: list[str]
    descriptions: list[list[str]]

    def __post_init__(self) -> None:
        if len(self.image_ids) != len(self.descriptions):
            raise ValueError("one description list per image")
        empty = [i for i, d in zip(self.image_ids, self.descriptions, strict=True) if not d]
        if empty:
            raise ValueError(f"images without a description, e.g. {empty[:3]}")

    def __len__(self) -> int:
        return len(self.image_ids)

    def split(self, held_out: int) -> tuple[DescribedImages, DescribedImages]:
        """(train, held-out): the last ``held_out`` images are never trained on."""
        if held_out >= len(self):
            raise ValueError(f"held_out={held_out} leaves no training images of {len(self)}")
        cut = len(self) - held_out
        return (
            DescribedImages(self.image_ids[:cut], self.descriptions[:cut]),
            DescribedImages(self.image_ids[cut:], self.descriptions[cut:]),
        )


class Stage1(nn.Module):
    """The trainable parts of a BLIP-2 retrieval model (shared, not copied) + ITC temperature."""

    def __init__(self, model: Blip2ForImageTextRetrieval, temperature_init: float = 0.07) -> None:
        super().__init__()
        self.model = model
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature_init)))
        for p in model.vision_model.parameters():
            p.requires_grad_(False)

    @property
    def num_query_tokens(self) -> int:
        return self.model.query_tokens.shape[1]

    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(0.01, 0.5)

    def image_embeds(self, vit_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) ViT tokens -> (B, Q, P) L2-normalised image token embeddings."""
        m = self.model
        out = m.qformer(
            query_embeds=m.query_tokens.expand(vit_tokens.shape[0], -1, -1),
            encoder_hidden_states=vit_tokens,
        ).last_hidden_state
        return F.normalize(m.vision_projection(out), dim=-1)

    def text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) tokens -> (B, P) L2-normalised text-only embeddings (masked token mean)."""
        m = self.model
        hidden = m.qformer(
            query_embeds=m.embeddings(input_ids=input_ids),
            query_length=0,
            attention_mask=attention_mask,
        ).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        return F.normalize(m.text_projection(pooled), dim=-1)

    def fused(
        self, vit_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """The ITM layout: (B, Q + L, H) outputs of [query tokens ; text] over the image."""
        m, b, nq = self.model, vit_tokens.shape[0], self.num_query_tokens
        embeds = m.embeddings(input_ids=input_ids, query_embeds=m.query_tokens.expand(b, -1, -1))
        mask = torch.cat([attention_mask.new_ones(b, nq), attention_mask], dim=1)
        return m.qformer(
            query_embeds=embeds,
            query_length=nq,
            attention_mask=mask,
            encoder_hidden_states=vit_tokens,
        ).last_hidden_state

    def itm_logits(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, Q + L, H) fused outputs -> (B, 2) not-match / match logits."""
        return self.model.itm_head(fused[:, : self.num_query_tokens]).mean(dim=1)

    def fused_query(self, fused: torch.Tensor) -> torch.Tensor:
        """(B, P): mean fused query output through ``text_projection`` (DQE-CIR's q_base)."""
        pooled = fused[:, : self.num_query_tokens].mean(dim=1)
        return F.normalize(self.model.text_projection(pooled), dim=-1)


def _max_sim(queries: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B, P) x (N, Q, P) -> (B, N) max-over-tokens similarity."""
    return torch.einsum("bp,nqp->bnq", queries, images).amax(dim=-1)


def _hard_negatives(sim: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, B) similarities -> (B,) one column per row, != the row, drawn ~ softmax(sim)."""
    weights = sim.detach().float().softmax(dim=1)
    weights.fill_diagonal_(0.0)
    weights = weights + 1e-12 * (1 - torch.eye(len(sim), device=sim.device))  # never all-zero
    return torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(sim.device)


def stage1_losses(
    net: Stage1,
    vit: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: PretrainConfig,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """ITC over the batch; ITM and fused ITC on its first ``cfg.itm_pairs`` pairs."""
    b = vit.shape[0]
    labels = torch.arange(b, device=vit.device)
    k = min(cfg.itm_pairs, b)
    img = net.image_embeds(vit)  # (B, Q, P)
    txt = net.text_embeds(input_ids, attention_mask)  # (B, P)
    sim_t2i = _max_sim(txt, img)  # (B texts, B images)
    tau = net.temperature()
    itc = (F.cross_entropy(sim_t2i / tau, labels) + F.cross_entropy(sim_t2i.t() / tau, labels)) / 2
    neg_text = _hard_negatives(sim_t2i.t(), generator)[:k]  # a hard text for each image
    neg_image = _hard_negatives(sim_t2i, generator)[:k]  # a hard image for each text
    ids, mask = input_ids[:k], attention_mask[:k]
    fused = net.fused(
        torch.cat([vit[:k], vit[:k], vit[neg_image]]),
        torch.cat([ids, input_ids[neg_text], ids]),
        torch.cat([mask, attention_mask[neg_text], mask]),
    )
    itm_target = torch.cat([torch.ones(k), torch.zeros(2 * k)]).long().to(vit.device)
    itm = F.cross_entropy(net.itm_logits(fused), itm_target)
    fused_q = net.fused_query(fused[:k])
    fused_itc = F.cross_entropy(_max_sim(fused_q, img) / tau, labels[:k])
    loss = itc + cfg.itm_weight * itm + cfg.fused_itc_weight * fused_itc
    return {"loss": loss, "itc": itc, "itm": itm, "fused_itc": fused_itc}


@torch.no_grad()
def text_to_image_recall(
    net: Stage1,
    tokenizer: Any,
    features: FeatureSource,
    data: DescribedImages,
    max_len: int,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """Held-out Recall@K (%): text -> image (ITC) and fused query -> its own image."""
    was_training = net.training
    net.eval()
    device = net.log_temperature.device
    imgs, txts, fused = [], [], []
    for start in range(0, len(data), 256):
        ids = data.image_ids[start : start + 256]
        vit = load_tokens(features, ids, device)
        texts = [d[0] for d in data.descriptions[start : start + 256]]
        input_ids, mask = tokenize(tokenizer, texts, max_len, device)
        imgs.append(net.image_embeds(vit))
        txts.append(net.text_embeds(input_ids, mask))
        fused.append(net.fused_query(net.fused(vit, input_ids, mask)))
    images = torch.cat(imgs)
    out: dict[str, float] = {}
    for name, queries in (("text", torch.cat(txts)), ("fused", torch.cat(fused))):
        sim = _max_sim(queries, images)
        rank = (sim > sim.diagonal().unsqueeze(1)).sum(dim=1)
        for k in ks:
            out[f"{name}_to_image/recall@{k}"] = float((rank < k).float().mean() * 100)
    net.train(was_training)
    return out


def _optimizer(net: Stage1, cfg: PretrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "query_tokens" in name else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def pretrain(
    model: Blip2ForImageTextRetrieval,
    tokenizer: Any,
    features: FeatureSource,
    corpus: DescribedImages,
    cfg: PretrainConfig,
    *,
    max_len: int = 32,
    device: torch.device | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model``'s Q-Former side in place; its ViT is not run (tokens from ``features``).

    Returns one record per ``log_every`` steps (mean loss terms, lr, temperature), the last
    with held-out retrieval; the last ``cfg.held_out`` images are never trained on.
    """
    device = device or torch.device("cpu")
    torch.manual_seed(cfg.seed)
    train, held_out = corpus.split(cfg.held_out)
    net = Stage1(model, cfg.temperature_init).to(device).train()
    optimizer = _optimizer(net, cfg)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
    )
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[dict[str, float]] = []
    sums, start = dict.fromkeys(TERMS, 0.0), time.perf_counter()
    for step in range(cfg.steps):
        rows = rng.choice(len(train), size=min(cfg.batch_size, len(train)), replace=False)
        texts = [train.descriptions[i][int(rng.integers(len(train.descriptions[i])))] for i in rows]
        vit = load_tokens(features, [train.image_ids[i] for i in rows], device)
        input_ids, mask = tokenize(tokenizer, texts, max_len, device)
        terms = stage1_losses(net, vit, input_ids, mask, cfg, generator)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        schedule.step()
        for name in TERMS:
            sums[name] += float(terms[name].detach())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            n = (step % cfg.log_every) + 1
            record = {"step": float(step + 1), **{k: v / n for k, v in sums.items()}}
            record.update(
                lr=float(schedule.get_last_lr()[0]),
                temperature=float(net.temperature().detach()),
                pairs_per_s=(step + 1) * cfg.batch_size / (time.perf_counter() - start),
            )
            if step + 1 == cfg.steps:
                record.update(text_to_image_recall(net, tokenizer, features, held_out, max_len))
            history.append(record)
            sums = dict.fromkeys(TERMS, 0.0)
            if progress is not None:
                progress(record)
    net.eval()
    return history
