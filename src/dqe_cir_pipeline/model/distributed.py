"""Data-parallel training under ``torchrun``: rank facts, process group, collectives.

Without ``torchrun`` all of it is a no-op at world size 1, so one code path serves both.
Embeddings are all-gathered with gradients: a step on W ranks equals one step of the same
global batch on one process (docs/method.md, tests/model/test_distributed.py).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from dqe_cir_pipeline.launch import launch_rank
from dqe_cir_pipeline.model.device import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """Who this process is in a data-parallel job (rank 0 writes checkpoints, data, MLflow)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """This process as ``torchrun`` launched it; rank 0 of 1 without ``torchrun``."""
        rank, world_size = launch_rank()
        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: str = "auto", timeout_minutes: float = 60.0) -> torch.device:
        """Pick this rank's device and join the process group (idempotent).

        CUDA ranks use ``cuda:LOCAL_RANK`` and NCCL; CPU ranks use gloo. The timeout
        covers rank 0 validating or re-mining alone while the others wait.
        """
        resolved = resolve_device(device)
        if self.enabled and resolved.type == "cuda":
            if torch.cuda.device_count() <= self.local_rank:
                raise RuntimeError(
                    f"LOCAL_RANK={self.local_rank} but only {torch.cuda.device_count()} CUDA "
                    "devices are visible"
                )
            resolved = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(resolved)
        if self.enabled and not dist.is_initialized():
            backend = "nccl" if resolved.type == "cuda" else "gloo"
            dist.init_process_group(
                backend=backend,
                rank=self.rank,
                world_size=self.world_size,
                timeout=timedelta(minutes=timeout_minutes),
            )
            logger.info(
                "rank %d/%d joined the %s process group on %s",
                self.rank,
                self.world_size,
                backend,
                resolved,
            )
        return resolved

    def teardown(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; for small control data)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (no gradient)."""
        if not self.enabled:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_rows(
        self, tensor: torch.Tensor, sizes: Sequence[int], *, differentiable: bool
    ) -> torch.Tensor:
        """Every rank's rows in rank order (rank r gives ``sizes[r]``), padded for the collective.

        With ``differentiable`` the gradient of the gathered rows flows back to their rank.
        """
        if not self.enabled:
            return tensor
        if tensor.shape[0] != sizes[self.rank]:
            raise ValueError(
                f"rank {self.rank} has {tensor.shape[0]} rows, expected {sizes[self.rank]}"
            )
        longest = max(sizes)
        if tensor.shape[0] < longest:
            pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
            tensor = torch.cat([tensor, pad])
        gathered = _GatherRows.apply(tensor) if differentiable else _all_gather(tensor)
        parts = gathered.split(longest)
        return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)])


def _all_gather(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    """All-gather on dim 0; backward all-reduces the gradient and returns this rank's rows.

    Every rank's loss depends on every rank's rows, so d loss / d rows_r sums over ranks.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


SINGLE = Distributed()
