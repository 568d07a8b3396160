"""Nodes of the ``training`` pipeline."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dqe_cir_pipeline.data_sources.common import dataset_fingerprint  # noqa: E402
from dqe_cir_pipeline.datasets.feature_cache import FeatureCache  # noqa: E402
from dqe_cir_pipeline.io_utils import stable_hash  # noqa: E402
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone  # noqa: E402
from dqe_cir_pipeline.model.config import RuntimeConfig  # noqa: E402
from dqe_cir_pipeline.model.data import TrainData  # noqa: E402
from dqe_cir_pipeline.model.distributed import Distributed  # noqa: E402
from dqe_cir_pipeline.model.evaluate import EvalSet, EvaluationConfig, evaluate_split  # noqa: E402
from dqe_cir_pipeline.model.factory import build_model  # noqa: E402
from dqe_cir_pipeline.model.losses import LOSS_TERMS  # noqa: E402
from dqe_cir_pipeline.model.mining_result import MiningResult  # noqa: E402
from dqe_cir_pipeline.model.negatives import MiningConfig  # noqa: E402
from dqe_cir_pipeline.model.train import FitData, fit  # noqa: E402
from dqe_cir_pipeline.model.train_config import TrainingConfig  # noqa: E402
from dqe_cir_pipeline.tracking import metric_history  # noqa: E402

logger = logging.getLogger(__name__)


def train_model(
    vit_features: FeatureCache,
    triplets: pd.DataFrame,
    images: pd.DataFrame,
    initial_negatives: pd.DataFrame,
    backbone_info: dict[str, Any],
    backbone: BackboneConfig,
    training: TrainingConfig,
    mining: MiningConfig,
    evaluation: EvaluationConfig,
    runtime: RuntimeConfig,
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, Any]]:
    """Train DQE-CIR (or a configured baseline); validate every epoch; keep the best.

    Under ``torchrun`` every rank runs this node: DistributedDataParallel over the ranks,
    ``training.loop.batch_size`` is the global batch, rank 0 validates and writes.

    Returns:
        The best checkpoint dict, the per-epoch history table and MLflow metric histories.
    """
    distributed = Distributed.from_env()
    distributed.setup(runtime.device)  # before the model is built: picks this rank's GPU
    bb = load_backbone(backbone)
    if bb.key != backbone_info["key"]:
        raise RuntimeError(
            f"backbone changed since extraction ({backbone_info['key']} -> {bb.key}): "
            "re-run embedding_extraction"
        )
    data_key = dataset_fingerprint(images, triplets)
    training = _keyed_run_dir(training, mining, evaluation, bb.key, data_key, bb.max_text_len)
    data = TrainData.from_tables(triplets, images, "train")
    val = EvalSet.from_tables(triplets, images, evaluation.selection_split)
    initial = None
    if training.loop.negatives == "mined" and training.loop.initial_negatives == "model":
        initial = MiningResult.from_table(initial_negatives, data, mining.max_zone, mining.strategy)

    def validate(m: Any) -> dict[str, float]:
        return evaluate_split(m, bb, vit_features, val, evaluation, runtime).metrics

    model = build_model(bb, training.model, training.loop.seed, runtime.device)
    try:
        result = fit(
            training,
            FitData(data, vit_features, validate, initial_mining=initial),
            model,
            bb,
            mining,
            runtime=runtime,
            distributed=distributed,
        )
    finally:
        distributed.teardown()
    metrics = metric_history(result.history)
    metrics.update(metric_history(result.mining_summaries, prefix="mining/refresh."))
    checkpoint = {
        **result.best_checkpoint,
        "mining": asdict(mining),
        "data": {"fingerprint": data_key, "selection_split": evaluation.selection_split},
    }
    return checkpoint, pd.DataFrame(result.history), metrics


def _keyed_run_dir(
    training: TrainingConfig,
    mining: MiningConfig,
    evaluation: EvaluationConfig,
    backbone_key: str,
    data_key: str,
    max_text_len: int,
) -> TrainingConfig:
    """``training`` with ``loop.run_dir`` pointing at this run's own sub-folder.

    The folder is named by a hash of everything the result depends on: the data, the
    backbone, every training setting, the mining settings and the selection split. The
    same configuration resumes where it stopped; any change starts a fresh run beside
    the old one, so an old result is never returned for new settings or new data.
    """
    if training.loop.run_dir is None:
        return training
    depends_on = {
        "data": data_key,
        "backbone": backbone_key,
        "training": training.fingerprint(max_text_len),
        "mining": asdict(mining),
        "selection_split": evaluation.selection_split,
    }
    run_dir = Path(training.loop.run_dir) / f"run-{stable_hash(depends_on)}"
    logger.info("training run folder %s (resumed only with the same data and settings)", run_dir)
    return replace(training, loop=replace(training.loop, run_dir=str(run_dir)))


def plot_training_curves(training_history: pd.DataFrame) -> Figure:
    """Loss terms, validation recall, the learned temperature and the attribute weights
    by edit type (on the selection split) per epoch."""
    history = training_history
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    ep = history["epoch"] + 1
    for col in (f"train/{t}" for t in LOSS_TERMS):
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
    styles = {"color": "tab:red", "shape": "tab:blue"}
    for edit in ("color", "shape", "both", "other"):
        for attr, colour in styles.items():
            col = f"val/weights/{edit}/{attr}"
            if col in history:
                line = "-" if edit == attr else ":"
                axes[3].plot(ep, history[col], line, color=colour, label=f"w_{attr}, {edit} edits")
    axes[3].set_title("attribute weights by edit type (val)")
    if axes[3].lines:
        axes[3].legend(fontsize=6)
    for ax in axes:
        ax.set_xlabel("epoch")
    fig.tight_layout()
    return fig
