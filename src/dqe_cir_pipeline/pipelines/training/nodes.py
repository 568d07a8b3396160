"""Nodes of the ``training`` pipeline."""

from __future__ import annotations

import logging
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dqe_cir_pipeline.datasets.feature_cache import FeatureCache  # noqa: E402
from dqe_cir_pipeline.model.distributed import Distributed  # noqa: E402
from dqe_cir_pipeline.model.engine import fit  # noqa: E402
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate  # noqa: E402
from dqe_cir_pipeline.pipelines.common import (  # noqa: E402
    backbone_from_params,
    build_loss,
    build_model,
    build_train_data,
    mining_config,
    mining_from_table,
    mlflow_history,
    train_config,
)

logger = logging.getLogger(__name__)


def train_model(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    initial_negatives: pd.DataFrame,
    backbone_info: dict[str, Any],
    backbone: dict[str, Any],
    training: dict[str, Any],
    mining: dict[str, Any],
    evaluation: dict[str, Any],
    runtime: dict[str, Any],
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any], Figure]:
    """Train DQE-CIR (or a configured baseline); validate every epoch; keep the best.

    Under ``torchrun`` every rank runs this node: DistributedDataParallel over the ranks,
    ``training.batch_size`` is the global batch, rank 0 validates and writes.

    Returns:
        The best checkpoint dict, the per-epoch history table, MLflow metric histories
        and a figure of the training curves.
    """
    cfg = train_config(training, runtime, backbone)
    distributed = Distributed.from_env()
    distributed.setup(cfg.device)  # before the model is built: picks this rank's GPU
    bb = backbone_from_params(backbone)
    if bb.key != backbone_info["key"]:
        raise RuntimeError(
            f"backbone changed since extraction ({backbone_info['key']} -> {bb.key}): re-run embedding_extraction"
        )
    model = build_model(bb, cfg)
    data = build_train_data(triplets, images, "train")
    val = EvalSet.from_tables(triplets, images, evaluation["split"])
    mcfg = mining_config(mining)
    initial = None
    if cfg.negatives == "mined" and cfg.initial_negatives == "model":
        initial = mining_from_table(initial_negatives, data, mcfg)

    def validate(m: Any) -> dict[str, float]:
        return evaluate(
            m, vit_features, bb.tokenizer, val,
            ks=tuple(evaluation["ks"]), chunk_size=cfg.eval_chunk_size,
            max_len=cfg.max_text_len, amp_dtype=cfg.amp_dtype,
        ).metrics

    try:
        result = fit(
            model, build_loss(cfg), bb.tokenizer, vit_features, data, cfg, mcfg, validate,
            backbone_meta={"key": bb.key, "name": bb.name}, initial_mining=initial,
            distributed=distributed,
        )
    finally:
        distributed.teardown()
    history = pd.DataFrame(result.history)
    metrics = mlflow_history(result.history)
    for rec in result.mining_summaries:
        for k, v in rec.items():
            if k != "epoch":
                metrics.setdefault(f"mining.refresh.{k}", []).append({"value": float(v), "step": int(rec["epoch"])})
    checkpoint = dict(result.best_checkpoint)
    checkpoint["mining"] = dict(mining)
    return checkpoint, history, metrics, plot_training_curves(history)


def plot_training_curves(history: pd.DataFrame) -> Figure:
    """Loss terms and the selection metric per epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ep = history["epoch"] + 1
    for col in ("train/loss", "train/main", "train/color_margin", "train/shape_margin"):
        if col in history:
            axes[0].plot(ep, history[col], marker="o", label=col.split("/")[1])
    axes[0].set_title("training loss terms")
    axes[0].legend()
    for col in [c for c in history.columns if c.startswith("val/recall") and "/" not in c[4:]]:
        axes[1].plot(ep, history[col], marker="o", label=col[4:])
    if "val/avg" in history:
        axes[1].plot(ep, history["val/avg"], marker="s", color="black", label="avg (selection)")
    axes[1].set_title("validation recall (%)")
    axes[1].legend(fontsize=7)
    axes[2].plot(ep, history["train/temperature"], marker="o", label="temperature")
    axes[2].set_title("learned temperature")
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig
