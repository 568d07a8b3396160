"""Nodes of the ``pretraining`` pipeline: a described-scene corpus, then stage-1 training.

The corpus scenes are drawn fresh and never equal a scene of the CIR benchmark (a base
or an edited variant, in train, val or test), so the pretrained backbone has seen
neither the benchmark's images nor its modification texts.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import asdict, field
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dqe_cir_pipeline.data_sources.config import DataConfig  # noqa: E402
from dqe_cir_pipeline.data_sources.descriptions import (  # noqa: E402
    CorpusConfig,
    benchmark_scenes,
    corpus_vocabulary,
    generate_corpus,
    read_corpus,
)
from dqe_cir_pipeline.datasets.pretrained_backbone import (  # noqa: E402
    PretrainingJob,
    TrainedBackbone,
)
from dqe_cir_pipeline.io_utils import stable_hash  # noqa: E402
from dqe_cir_pipeline.model.backbone import BackboneConfig, build_tiny_backbone  # noqa: E402
from dqe_cir_pipeline.model.config import RuntimeConfig, build_strict, config_block  # noqa: E402
from dqe_cir_pipeline.model.device import resolve_device  # noqa: E402
from dqe_cir_pipeline.model.extract import VitEncoder, extract_to_memory  # noqa: E402
from dqe_cir_pipeline.model.pretrain import DescribedImages, PretrainConfig, pretrain  # noqa: E402
from dqe_cir_pipeline.tracking import metric_history  # noqa: E402

logger = logging.getLogger(__name__)

#: Bumped when the pretraining code changes what a given configuration produces.
PRETRAINING_FORMAT = 1


@config_block
class PretrainingParams:
    """The ``pretraining`` block: where the corpus goes, the corpus, the recipe.

    ``corpus`` holds ``CorpusConfig``'s fields (checked at start-up).
    """

    corpus_root: str = "data/synthetic/01_raw/pretraining_corpus"
    corpus: dict[str, Any] = field(default_factory=dict)
    train: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        self.corpus_config()

    def corpus_config(self) -> CorpusConfig:
        return build_strict(CorpusConfig, self.corpus, "pretraining.corpus")


def prepare_pretraining_corpus(pretraining: PretrainingParams, data: DataConfig) -> dict[str, Any]:
    """Render the described-scene corpus (reused when its settings are unchanged).

    Scenes equal to any scene of the benchmark ``data.synthetic`` describes (bases and
    edited variants of every split) are excluded.
    """
    exclude = benchmark_scenes(data.generator())
    summary = generate_corpus(pretraining.corpus_root, pretraining.corpus_config(), exclude)
    return {"root": pretraining.corpus_root, "summary": summary}


def pretrain_backbone(
    corpus_source: dict[str, Any],
    backbone: BackboneConfig,
    pretraining: PretrainingParams,
    runtime: RuntimeConfig,
) -> PretrainingJob:
    """Describe the stage-1 run; the dataset runs it only if its result does not exist.

    The key covers the tiny architecture, the corpus (its manifest hash), the
    tokenizer's corpus and the recipe, so a change of any of them trains a new backbone.
    """
    vocabulary = corpus_vocabulary()
    description = {
        "format": PRETRAINING_FORMAT,
        "architecture": asdict(backbone.tiny),
        "corpus": corpus_source["summary"]["config_hash"],
        "excluded_scenes": corpus_source["summary"]["exclusion_hash"],
        "vocabulary": stable_hash(vocabulary),
        "recipe": asdict(pretraining.train),
    }
    key = f"tiny-pretrained-{stable_hash(description)}"

    def run() -> TrainedBackbone:  # reads the corpus only when it has to train
        corpus = read_corpus(corpus_source["root"])
        return _run_pretraining(corpus, vocabulary, backbone, pretraining.train, runtime)

    return PretrainingJob(key=key, description=description, run=run)


def _run_pretraining(
    corpus: pd.DataFrame,
    vocabulary: list[str],
    backbone: BackboneConfig,
    recipe: PretrainConfig,
    runtime: RuntimeConfig,
) -> TrainedBackbone:
    start = time.perf_counter()
    texts = [text for forms in corpus["descriptions"] for text in forms] + vocabulary
    with tempfile.TemporaryDirectory(prefix="tiny-init-") as init_dir:
        # descriptions are long (up to ~50 words): pretraining reads every position
        init = build_tiny_backbone(backbone.tiny, texts, init_dir)
    device = resolve_device(runtime.device)
    ids, paths = corpus["image_id"].tolist(), corpus["path"].tolist()
    encoder = VitEncoder(init, device, batch_size=256, amp_dtype=runtime.amp_dtype)
    features = extract_to_memory(encoder, ids, paths)
    logger.info(
        "pretraining corpus: %d images encoded in %.1fs", len(ids), time.perf_counter() - start
    )
    data = DescribedImages(ids, [list(d) for d in corpus["descriptions"]])

    def progress(record: dict[str, float]) -> None:
        logger.info(
            "pretraining step %d/%d loss %.3f (itc %.3f itm %.3f fused %.3f), %.0f pairs/s",
            record["step"],
            recipe.steps,
            record["loss"],
            record["itc"],
            record["itm"],
            record["fused_itc"],
            record["pairs_per_s"],
        )

    history = pretrain(
        init.model,
        init.tokenizer,
        features,
        data,
        recipe,
        max_len=init.max_text_len,
        device=device,
        progress=progress,
    )
    init.model.to("cpu")
    final = history[-1]
    logger.info(
        "pretraining held-out retrieval: %s", {k: v for k, v in final.items() if "recall" in k}
    )
    record = {"history": history, "seconds": time.perf_counter() - start, "images": len(ids)}
    return TrainedBackbone(model=init.model, tokenizer=init.tokenizer, record=record)


def summarize_pretraining(pretrained_backbone: dict[str, Any]) -> tuple[dict[str, Any], Figure]:
    """MLflow metric histories (step = optimiser step) and the loss curves."""
    history = pretrained_backbone["history"]
    metrics = metric_history(history, prefix="pretraining/", step_key="step")
    return metrics, plot_pretraining(pd.DataFrame(history))


def plot_pretraining(history: pd.DataFrame) -> Figure:
    """ITC, ITM and fused-ITC losses per logged step."""
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for col in ("loss", "itc", "itm", "fused_itc"):
        ax.plot(history["step"], history[col], marker=".", label=col)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title("stage-1 pretraining")
    ax.legend()
    fig.tight_layout()
    return fig
