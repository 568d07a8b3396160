"""Nodes of the ``negative_mining`` pipeline.

The same ``mine_with_model`` call refreshes the negatives inside training on the
interval schedule; this pipeline runs it once with the untrained model so the
negatives and their Delta distribution can be inspected before training starts.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache  # noqa: E402
from dqe_cir_pipeline.model.engine import encode_for_mining, mine_from_embeddings  # noqa: E402
from dqe_cir_pipeline.model.negatives import MiningResult, delta_histogram  # noqa: E402
from dqe_cir_pipeline.pipelines.common import (  # noqa: E402
    backbone_from_params,
    build_model,
    build_train_data,
    mining_config,
    mining_table,
    mlflow_metrics,
    train_config,
)

logger = logging.getLogger(__name__)


def mine_initial_negatives(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: dict[str, Any],
    training: dict[str, Any],
    mining: dict[str, Any],
    runtime: dict[str, Any],
) -> tuple[pd.DataFrame, dict[str, Any], Figure]:
    """Mine each training query's mid-zone negatives with the initial model.

    Returns:
        The candidates table (Parquet), summary metrics for MLflow and a plot of the
        target-relative Delta distribution with the zone marked.
    """
    cfg = train_config(training, runtime, backbone)
    mcfg = mining_config(mining)
    bb = backbone_from_params(backbone)
    model = build_model(bb, cfg)
    data = build_train_data(triplets, images, "train")
    start = time.perf_counter()
    queries, pool = encode_for_mining(model, vit_features, bb.tokenizer, data, max_len=cfg.max_text_len,
                                      amp_dtype=cfg.amp_dtype)
    result = mine_from_embeddings(queries, pool, data, mcfg, next(model.parameters()).device)
    seconds = time.perf_counter() - start
    summary = {**result.summary(), "seconds": seconds, "queries": float(len(data)), "peak_rss_mb": _peak_rss_mb()}
    logger.info("mined %s negatives for %d queries in %.2fs: %s", mcfg.strategy, len(data), seconds,
                {k: round(v, 3) for k, v in summary.items()})
    fig = _delta_plot(queries, pool, data, result)
    return mining_table(result, data), mlflow_metrics(summary, prefix="mining.initial."), fig


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _delta_plot(queries: torch.Tensor, pool: torch.Tensor, data, result: MiningResult) -> Figure:
    """Delta distributions of a few queries (pool vs zone) and zone sizes over all queries."""
    sample = list(range(min(4, len(data))))
    hist = delta_histogram(
        queries[sample], pool, torch.as_tensor(data.target_idx[sample]), torch.as_tensor(data.reference_idx[sample]),
        query_indices=list(range(len(sample))), result=_subset(result, sample),
        query_groups=None if data.query_groups is None else data.query_groups[sample],
        pool_groups=data.pool_groups,
    )
    fig, axes = plt.subplots(1, len(sample) + 1, figsize=(3.2 * (len(sample) + 1), 3.0))
    for j in range(len(sample)):
        ax = axes[j]
        sel = hist["query"] == j
        d, z = hist["delta"][sel], hist["in_zone"][sel]
        bins = np.linspace(float(d.min()), float(d.max()) + 1e-6, 40)
        ax.hist(d, bins=bins, color="lightgray", label="pool")
        ax.hist(d[z], bins=bins, color="tab:orange", label="mid-zone")
        ax.axvline(0.0, color="green", lw=1, label="target")
        ax.set_title(f"query {data.query_ids[sample[j]]}", fontsize=8)
        ax.set_xlabel("Delta = s(q,c) - s(q,t)", fontsize=7)
        if j == 0:
            ax.legend(fontsize=6)
    axes[-1].hist(result.zone_size, bins=30, color="tab:orange")
    axes[-1].set_title("zone size over queries", fontsize=8)
    fig.tight_layout()
    return fig


def _subset(result: MiningResult, rows: list[int]) -> MiningResult:
    pick = np.asarray(rows, dtype=np.int64)
    return MiningResult(
        candidates=result.candidates[pick], deltas=result.deltas[pick], zone_size=result.zone_size[pick],
        lower=result.lower[pick], upper=result.upper[pick], pool_size=result.pool_size[pick],
        fallback=result.fallback[pick], widenings=result.widenings[pick], strategy=result.strategy,
    )
