"""Nodes of the ``negative_mining`` pipeline.

The same ``mine_from_embeddings`` call refreshes the negatives inside training on the
interval schedule; this pipeline runs it once with the untrained model so the
negatives and their Delta distribution can be inspected before training starts. The
mining node describes the pass by a key; the ``mined_negatives`` dataset mines only
when nothing is stored under that key.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dqe_cir_pipeline.data_sources.common import dataset_fingerprint  # noqa: E402
from dqe_cir_pipeline.datasets.feature_cache import FeatureCache  # noqa: E402
from dqe_cir_pipeline.datasets.mined_negatives import MinedNegatives, MiningJob  # noqa: E402
from dqe_cir_pipeline.io_utils import short_hash, stable_hash  # noqa: E402
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone  # noqa: E402
from dqe_cir_pipeline.model.config import RuntimeConfig  # noqa: E402
from dqe_cir_pipeline.model.data import TrainData  # noqa: E402
from dqe_cir_pipeline.model.device import resolve_device  # noqa: E402
from dqe_cir_pipeline.model.factory import build_model  # noqa: E402
from dqe_cir_pipeline.model.mining import (  # noqa: E402
    encode_for_mining,
    false_negative_stats,
    mine_from_embeddings,
    neighbourhood_stats,
)
from dqe_cir_pipeline.model.negatives import MiningConfig, delta_histogram  # noqa: E402
from dqe_cir_pipeline.model.train_config import TrainingConfig  # noqa: E402
from dqe_cir_pipeline.tracking import metric_values  # noqa: E402

logger = logging.getLogger(__name__)

#: Queries whose whole Delta distribution is kept for the plot.
PLOTTED_QUERIES = 4
#: Part of the key: bumped when the mining or its stored form changes meaning.
MINING_FORMAT = 1


def mine_initial_negatives(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: BackboneConfig,
    training: TrainingConfig,
    mining: MiningConfig,
    runtime: RuntimeConfig,
) -> MiningJob:
    """Describe mining each training query's negatives with the initial (untrained) model.

    The ``mined_negatives`` dataset mines only when no result is stored under the key,
    which covers the data (queries, image bytes, pools), the cached features (backbone
    and preprocessing), the backbone settings, the model's settings and seed, every
    mining setting and the precision the device computes in: a re-run with nothing
    changed mines nothing, and any change mines anew.
    """
    device = resolve_device(runtime.device).type
    description = {
        "format": MINING_FORMAT,
        "data": dataset_fingerprint(images, triplets),
        "pools": _pool_fingerprint(images, triplets),
        "features": vit_features.cache_key,
        "backbone": asdict(backbone),
        "model": asdict(training.model),
        "seed": training.loop.seed,
        "mining": asdict(mining),
        "device": device,
        "precision": runtime.amp_dtype if device == "cuda" else "float32",
    }

    def run() -> MinedNegatives:  # loads the backbone only when it has to mine
        return _mine(vit_features, triplets, images, backbone, training, mining, runtime)

    return MiningJob(key=f"negatives-{stable_hash(description)}", description=description, run=run)


def _pool_fingerprint(images: pd.DataFrame, triplets: pd.DataFrame) -> str:
    """What the data fingerprint leaves out and mining reads: each row's benchmark (its
    protocol) and category (FashionIQ's pools are per category)."""
    columns = [
        frame[col].astype(str) for frame in (images, triplets) for col in ("dataset", "category")
    ]
    return short_hash("\x1e".join("\x1f".join(col) for col in columns))


def summarize_mining(
    mined_negatives: MinedNegatives,
) -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """The negatives for training, their metrics (``reused`` 1 when nothing was mined)
    and the Delta sample for the plot.

    Returns:
        The candidates table (Parquet), summary metrics for MLflow and the Delta
        distribution of the first few queries (``query_id, delta, in_zone``).
    """
    mined = mined_negatives
    if mined.reused:
        logger.info("initial negatives %s reused: the same inputs were mined before", mined.key)
    summary = {**mined.summary, "reused": float(mined.reused)}
    return mined.table, metric_values(summary, prefix="mining/initial."), mined.delta_sample


def _mine(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    backbone: BackboneConfig,
    training: TrainingConfig,
    mining: MiningConfig,
    runtime: RuntimeConfig,
) -> MinedNegatives:
    """Mine with the untrained model: the table, its summary and the Delta sample."""
    bb = load_backbone(backbone)
    dqe = build_model(bb, training.model, training.loop.seed, runtime.device)
    data = TrainData.from_tables(triplets, images, "train")
    start = time.perf_counter()
    queries, pool = encode_for_mining(
        dqe, vit_features, bb.tokenizer, data, max_len=bb.max_text_len, amp_dtype=runtime.amp_dtype
    )
    result = mine_from_embeddings(queries, pool, data, mining, next(dqe.parameters()).device)
    seconds = time.perf_counter() - start
    summary = {**result.summary(), "seconds": seconds, "queries": float(len(data))}
    summary.update(neighbourhood_stats(queries, pool, data, result, mining.epsilon))
    summary.update(false_negative_stats(data, result))
    logger.info(
        "mined %s negatives for %d queries in %.2fs: %s",
        mining.strategy,
        len(data),
        seconds,
        {k: round(v, 3) for k, v in summary.items()},
    )
    sample = _delta_sample(queries, pool, data, result)
    return MinedNegatives(result.to_table(data), summary, sample)


def _delta_sample(
    queries: torch.Tensor, pool: torch.Tensor, data: TrainData, result: Any
) -> pd.DataFrame:
    rows = list(range(min(PLOTTED_QUERIES, len(data))))
    hist = delta_histogram(
        queries[rows],
        pool,
        torch.as_tensor(data.target_idx[rows]),
        torch.as_tensor(data.reference_idx[rows]),
        query_indices=list(range(len(rows))),
        result=result.subset(rows),
        query_groups=None if data.query_groups is None else data.query_groups[rows],
        pool_groups=data.pool_groups,
    )
    return pd.DataFrame(
        {
            "query_id": [data.query_ids[rows[q]] for q in hist["query"]],
            "delta": hist["delta"],
            "in_zone": hist["in_zone"],
        }
    )


def plot_delta_distribution(delta_sample: pd.DataFrame, initial_negatives: pd.DataFrame) -> Figure:
    """Delta distributions of a few queries (pool vs zone) and zone sizes over all queries."""
    queries = list(dict.fromkeys(delta_sample["query_id"]))
    fig, axes = plt.subplots(1, len(queries) + 1, figsize=(3.2 * (len(queries) + 1), 3.0))
    axes = np.atleast_1d(axes)
    for j, query_id in enumerate(queries):
        ax = axes[j]
        rows = delta_sample[delta_sample["query_id"] == query_id]
        d, z = rows["delta"].to_numpy(), rows["in_zone"].to_numpy(dtype=bool)
        bins = np.linspace(float(d.min()), float(d.max()) + 1e-6, 40)
        ax.hist(d, bins=bins, color="lightgray", label="pool")
        ax.hist(d[z], bins=bins, color="tab:orange", label="mid-zone")
        if not z.any():  # say why there is no orange: the zone was empty, a fallback was used
            ax.text(
                0.03,
                0.95,
                "empty mid-zone:\nfallback negative",
                transform=ax.transAxes,
                va="top",
                fontsize=6,
                color="darkred",
            )
        ax.axvline(0.0, color="green", lw=1, label="target")
        ax.set_title(f"query {query_id}", fontsize=8)
        ax.set_xlabel("Delta = s(q,c) - s(q,t)", fontsize=7)
        if j == 0:
            ax.legend(fontsize=6)
    axes[-1].hist(initial_negatives["zone_size"], bins=30, color="tab:orange")
    axes[-1].set_title("zone size over queries", fontsize=8)
    fig.tight_layout()
    return fig
