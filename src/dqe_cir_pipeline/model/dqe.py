"""DQE-CIR head on cached ViT tokens: composed query, colour/shape sub-queries, weights.

Shapes: B batch, T ViT tokens, D ViT width, L text length, Q query tokens, H Q-Former
width, P projection width. Paper vs our choices: docs/method.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2ForImageTextRetrieval

from dqe_cir_pipeline.model.config import config_block


@config_block
class DQEConfig:
    """DQE-CIR head settings (``training.model``); ``query_pooling``: "mean" (QuRe) or "cls" (SPRC).

    ``use_attribute_weights=False`` (ablation) gives q = q_base and weights [1, 0, 0].
    """

    use_attribute_weights: bool = True
    attr_hidden: int = 128
    base_weight_init: float = 0.8
    query_pooling: str = "mean"
    temperature_init: float = 0.07
    temperature_min: float = 0.01
    temperature_max: float = 0.5

    def __post_init__(self) -> None:
        if self.query_pooling not in ("mean", "cls"):
            raise ValueError(f"query_pooling must be 'mean' or 'cls', got {self.query_pooling!r}")
        if not 0.0 < self.base_weight_init < 1.0:
            raise ValueError("base_weight_init must lie in (0, 1)")
        if not 0.0 < self.temperature_min <= self.temperature_init <= self.temperature_max:
            raise ValueError("need 0 < temperature_min <= temperature_init <= temperature_max")


@dataclass
class QueryOutput:
    """Composed-query embeddings (all L2-normalised, (B, P)) and attribute weights (B, 3)."""

    q: torch.Tensor
    q_base: torch.Tensor
    q_color: torch.Tensor
    q_shape: torch.Tensor
    weights: torch.Tensor  # columns: base, color, shape


class AttributeHead(nn.Module):
    """[design] Residual sub-query normalise(text_projection(h) + MLP(h)); starts near q_base."""

    def __init__(self, hidden: int, proj_dim: int, init_std: float = 1e-3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, proj_dim)
        nn.init.normal_(self.fc1.weight, std=0.02)
        nn.init.zeros_(self.fc1.bias)
        nn.init.normal_(self.fc2.weight, std=init_std)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, pooled: torch.Tensor, base_proj: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled state, (B, P) unnormalised base projection -> (B, P) unit vectors."""
        return F.normalize(base_proj + self.fc2(F.gelu(self.fc1(pooled))), dim=-1)


class DQECIR(nn.Module):
    """Trainable DQE-CIR on a BLIP-2 whose Q-Former has the text path (no ViT inside).

    Its Q-Former side is a copy: models built from one backbone never share weights.
    """

    def __init__(self, backbone: Blip2ForImageTextRetrieval, cfg: DQEConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or DQEConfig()
        if not backbone.qformer.config.use_qformer_text_input:
            raise ValueError("the Q-Former needs use_qformer_text_input=True for the text path")
        self.query_tokens = nn.Parameter(backbone.query_tokens.detach().clone())  # (1, Q, H)
        self.embeddings = copy.deepcopy(backbone.embeddings)
        self.qformer = copy.deepcopy(backbone.qformer)
        self.vision_projection = copy.deepcopy(backbone.vision_projection)
        self.text_projection = copy.deepcopy(backbone.text_projection)
        hidden, proj = self.text_projection.in_features, self.text_projection.out_features

        self.color_head = AttributeHead(hidden, proj)
        self.shape_head = AttributeHead(hidden, proj)
        if self.cfg.use_attribute_weights:
            self.weight_mlp = nn.Sequential(
                nn.Linear(hidden, self.cfg.attr_hidden),
                nn.GELU(),
                nn.Linear(self.cfg.attr_hidden, 3),
            )
            nn.init.normal_(self.weight_mlp[0].weight, std=0.02)
            nn.init.zeros_(self.weight_mlp[0].bias)
            # Small (not zero) last layer: weights start ~ constant yet every layer gets
            # a gradient from the first step. Bias: softmax(bias) = (b, (1-b)/2, (1-b)/2).
            nn.init.normal_(self.weight_mlp[2].weight, std=1e-3)
            b = self.cfg.base_weight_init
            rest = math.log((1.0 - b) / 2.0)
            with torch.no_grad():
                self.weight_mlp[2].bias.copy_(torch.tensor([math.log(b), rest, rest]))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(self.cfg.temperature_init)))

    @property
    def num_query_tokens(self) -> int:
        """Q, the number of learned query tokens."""
        return self.query_tokens.shape[1]

    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp().clamp(self.cfg.temperature_min, self.cfg.temperature_max)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def _dtype(self) -> torch.dtype:
        return self.query_tokens.dtype

    def encode_targets(self, vit_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, D) ViT tokens -> (B, Q, P) target embeddings, unit norm per token."""
        b = vit_tokens.shape[0]
        out = self.qformer(
            query_embeds=self.query_tokens.expand(b, -1, -1),
            encoder_hidden_states=vit_tokens.to(self._dtype()),
        ).last_hidden_state  # (B, Q, H)
        return F.normalize(self.vision_projection(out), dim=-1)

    def encode_queries(
        self, vit_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> QueryOutput:
        """(B, T, D) reference ViT tokens, (B, L) ids ([CLS] first) and mask -> queries."""
        b, nq = vit_tokens.shape[0], self.num_query_tokens
        queries = self.query_tokens.expand(b, -1, -1)
        # BLIP-2 ITM layout: [query tokens ; text]
        embeds = self.embeddings(input_ids=input_ids, query_embeds=queries)  # (B, Q+L, H)
        mask = torch.cat([attention_mask.new_ones(b, nq), attention_mask], dim=1)
        hidden = self.qformer(
            query_embeds=embeds,
            query_length=nq,
            attention_mask=mask,
            encoder_hidden_states=vit_tokens.to(self._dtype()),
        ).last_hidden_state  # (B, Q+L, H)
        text_cls = hidden[:, nq]  # (B, H)
        pooled = hidden[:, :nq].mean(1) if self.cfg.query_pooling == "mean" else text_cls
        base_proj = self.text_projection(pooled)  # (B, P), mean commutes with the affine map
        q_base = F.normalize(base_proj, dim=-1)
        q_color = self.color_head(pooled, base_proj)
        q_shape = self.shape_head(pooled, base_proj)
        if self.cfg.use_attribute_weights:
            weights = self.weight_mlp(text_cls).softmax(dim=-1)  # (B, 3)
            mixed = weights[:, :1] * q_base + weights[:, 1:2] * q_color + weights[:, 2:] * q_shape
            q = F.normalize(mixed, dim=-1)
        else:
            weights = q_base.new_tensor([1.0, 0.0, 0.0]).expand(b, 3)
            q = q_base
        return QueryOutput(q=q, q_base=q_base, q_color=q_color, q_shape=q_shape, weights=weights)

    def forward(
        self, vit_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> QueryOutput:
        return self.encode_queries(vit_tokens, input_ids, attention_mask)

    @staticmethod
    def score(q: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, P) queries x (N, Q, P) targets -> (B, N) max-over-tokens scores."""
        return torch.einsum("bp,nkp->bnk", q, targets.to(q.dtype)).amax(dim=-1)

    @staticmethod
    def pair_score(q: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, P) queries x (B, Q, P) their own targets -> (B,) max-over-tokens scores."""
        return torch.einsum("bp,bkp->bk", q, targets.to(q.dtype)).amax(dim=-1)
