"""A negative-mining pass's result: in memory, in checkpoints and as a Parquet table.

``to_state`` / ``from_state`` are ``torch.load(weights_only=True)``-safe; ``to_table`` /
``from_table`` are the ``initial_negatives`` table that negative_mining hands to training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.model.fallback import fallback_share

if TYPE_CHECKING:
    from dqe_cir_pipeline.model.data import TrainData

#: Fallback codes stored in :attr:`MiningResult.fallback` (index = code).
FALLBACK_NAMES: tuple[str, ...] = (
    "none",  # zone found at the first try
    "widened",  # zone found after >= 1 widening (midzone)
    "hardest_below",  # zone empty after all widenings: hardest candidate <= -epsilon
    "random",  # nothing usable: a random pool member
    "empty_pool",  # no candidate at all (pool reduced to target/reference)
    "qure_short",  # QuRe: < 4 candidates below the target, all of them taken
)
_FB = {name: code for code, name in enumerate(FALLBACK_NAMES)}


@dataclass
class MiningResult:
    """Mined negatives of N queries (numpy, CPU).

    Attributes:
        candidates: (N, max_zone) int64 pool indices, by Delta descending, -1 padded.
        deltas: (N, max_zone) float32 Delta of each stored candidate, NaN padded.
        zone_size: (N,) full zone size (may exceed max_zone; 0 when a fallback is stored).
        lower: (N,) float32 zone bounds on Delta, with ``upper`` (NaN when none).
        pool_size: (N,) candidates in the query's pool, target and reference excluded.
        fallback: (N,) int8 codes into :data:`FALLBACK_NAMES`; ``widenings`` (N,) int8.
    """

    candidates: np.ndarray
    deltas: np.ndarray
    zone_size: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    pool_size: np.ndarray
    fallback: np.ndarray
    widenings: np.ndarray
    strategy: str = "midzone"
    fallback_names: tuple[str, ...] = field(default=FALLBACK_NAMES)

    def __len__(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def n_stored(self) -> np.ndarray:
        """``(N,)`` number of stored candidates per query."""
        return (self.candidates >= 0).sum(axis=1)

    def fallback_labels(self) -> np.ndarray:
        """``(N,)`` fallback names as strings."""
        return np.asarray(self.fallback_names, dtype=object)[self.fallback.astype(np.int64)]

    def summary(self) -> dict[str, float]:
        """Flat statistics for logging: sizes, fallback counts, mean Delta and bounds.

        ``empty_zone_rate``: share of queries whose first-try zone was empty (fallback or widening).
        ``fallback_share``: share whose negative came from a fallback, not the zone
        (``model.fallback``).
        """
        n = len(self)
        out: dict[str, float] = {
            "zone_size/mean": float(self.zone_size.mean()) if n else math.nan,
            "zone_size/median": float(np.median(self.zone_size)) if n else math.nan,
            "stored/mean": float(self.n_stored.mean()) if n else math.nan,
            "pool_size/mean": float(self.pool_size.mean()) if n else math.nan,
            "empty_zone_rate": float((self.fallback != _FB["none"]).mean()) if n else math.nan,
        }
        for code, name in enumerate(self.fallback_names):
            out[f"fallback/{name}"] = float((self.fallback == code).sum())
        out["fallback_share"] = fallback_share(out)
        for key, arr in (("delta", self.deltas), ("lower", self.lower), ("upper", self.upper)):
            finite = arr[np.isfinite(arr)]
            out[f"{key}/mean"] = float(finite.mean()) if finite.size else math.nan
        return out

    def subset(self, rows: list[int] | np.ndarray) -> MiningResult:
        """The result restricted to the queries at ``rows`` (in that order)."""
        pick = np.asarray(rows, dtype=np.int64)
        arrays = {
            f.name: getattr(self, f.name)[pick]
            for f in fields(self)
            if f.name not in ("strategy", "fallback_names")
        }
        return replace(self, **arrays)

    def to_state(self) -> dict[str, Any]:
        """A ``weights_only``-safe dict (arrays become tensors, tuples lists)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):  # copied: arrays read from Parquet are read-only
                v = torch.from_numpy(np.array(v, copy=True))
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MiningResult:
        """Inverse of :meth:`to_state`."""
        kwargs = {
            k: v.numpy()
            if isinstance(v, torch.Tensor)
            else (tuple(v) if isinstance(v, list) else v)
            for k, v in state.items()
        }
        return cls(**kwargs)

    def to_table(self, data: TrainData) -> pd.DataFrame:
        """One row per training query: its zone candidates (ids, pool index, Delta), bounds."""
        cands = [[int(j) for j in row if j >= 0] for row in self.candidates]
        deltas = [
            [float(d) for d in row[: len(c)]] for row, c in zip(self.deltas, cands, strict=True)
        ]
        return pd.DataFrame(
            {
                "query_id": data.query_ids,
                "reference_id": data.reference_ids,
                "target_id": data.target_ids,
                "candidate_ids": [[data.pool_ids[j] for j in row] for row in cands],
                "candidate_idx": cands,
                "deltas": deltas,
                "zone_size": self.zone_size,
                "lower": self.lower,
                "upper": self.upper,
                "pool_size": self.pool_size,
                "fallback": self.fallback_labels().astype(str),
                "widenings": self.widenings.astype(np.int64),
                "strategy": self.strategy,
            }
        )

    @classmethod
    def from_table(
        cls, table: pd.DataFrame, data: TrainData, max_zone: int, strategy: str
    ) -> MiningResult:
        """Rebuild from :meth:`to_table` output; ValueError if ``data``'s triplets changed since."""
        if table["query_id"].astype(str).tolist() != data.query_ids:
            raise ValueError(
                "initial_negatives does not match the training triplets (different queries or "
                "order): re-run the negative_mining pipeline"
            )
        n = len(table)
        candidates = np.full((n, max_zone), -1, dtype=np.int64)
        deltas = np.full((n, max_zone), np.nan, dtype=np.float32)
        rows = zip(table["candidate_idx"], table["candidate_ids"], table["deltas"], strict=True)
        for i, (idx, ids, ds) in enumerate(rows):
            idx = [int(j) for j in idx][:max_zone]
            for j, name in zip(idx, ids, strict=False):
                if j >= len(data.pool_ids) or data.pool_ids[j] != name:
                    raise ValueError(
                        f"initial_negatives row {i}: candidate {name!r} is not pool item {j}; "
                        "re-run negative_mining"
                    )
            candidates[i, : len(idx)] = idx
            deltas[i, : len(idx)] = np.asarray(ds, dtype=np.float32)[: len(idx)]
        return cls(
            candidates=candidates,
            deltas=deltas,
            zone_size=table["zone_size"].to_numpy(dtype=np.int64),
            lower=table["lower"].to_numpy(dtype=np.float32),
            upper=table["upper"].to_numpy(dtype=np.float32),
            pool_size=table["pool_size"].to_numpy(dtype=np.int64),
            fallback=np.asarray([_FB[f] for f in table["fallback"]], dtype=np.int8),
            widenings=table["widenings"].to_numpy(dtype=np.int8),
            strategy=str(table["strategy"].iloc[0]) if n else strategy,
        )
