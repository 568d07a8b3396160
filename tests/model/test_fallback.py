"""The share of queries whose mined negative came from a fallback, and the warning when
most did: from the mining summary's counts, at every mining pass."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from dqe_cir_pipeline.model.fallback import fallback_share, fallback_warning
from dqe_cir_pipeline.model.negatives import MiningConfig, mine_negatives


def _counts(**counts: float) -> dict[str, float]:
    return {"empty_zone_rate": 0.9, **{f"fallback/{k}": float(v) for k, v in counts.items()}}


def test_the_share_counts_every_fallback_but_not_the_widened_zone() -> None:
    counts = _counts(none=2, widened=2, hardest_below=3, random=2, empty_pool=1, qure_short=0)
    assert fallback_share(counts) == pytest.approx(0.6)
    assert fallback_share(_counts(none=5, widened=5)) == 0.0
    assert math.isnan(fallback_share(_counts(none=0)))  # nothing mined
    assert math.isnan(fallback_share({"zone_size/mean": 1.0}))


def test_the_warning_names_the_main_fallback_and_the_consequence() -> None:
    # the case seen on real data with placeholder images: 96 % fell back
    counts = _counts(none=300, widened=140, hardest_below=10928, random=16)
    warning = fallback_warning(counts, "midzone")
    assert warning == (
        "96% of queries fell back (10928 to hardest_below): "
        "this run is not training with mid-zone negatives"
    )
    assert fallback_warning(counts, "midzone", threshold=0.97) is None
    assert fallback_warning(_counts(none=1, hardest_below=1), "midzone") is None  # at 0.5
    assert fallback_warning(_counts(none=0), "midzone") is None
    assert "QuRe negatives" in str(fallback_warning(_counts(qure_short=3), "qure"))


def test_every_mining_pass_reports_the_share_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    # single-token items scoring 1 + delta: all within epsilon of the target -> no zone
    n = 6
    pool = torch.zeros(12, 1, 2, dtype=torch.float64)
    pool[:, 0, 0] = 1.0
    pool[2:, 0, 0] -= 1 / 256
    queries = torch.tensor([[1.0, 0.0]], dtype=torch.float64).repeat(n, 1)
    target, reference = torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)
    with caplog.at_level(logging.WARNING, logger="dqe_cir_pipeline.model.negatives"):
        result = mine_negatives(queries, pool, target, reference, MiningConfig(epsilon=0.02))
    assert result.summary()["fallback_share"] == 1.0
    assert "this run is not training with mid-zone negatives" in caplog.text
    caplog.clear()
    near = mine_negatives(queries, pool, target, reference, MiningConfig(epsilon=0.0))
    assert near.summary()["fallback_share"] == 0.0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
