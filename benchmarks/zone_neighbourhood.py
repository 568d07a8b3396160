"""Where the mid-zone sits relative to the target's real competitors, per zone setting.

For a finished run (its data root and a checkpoint), embeds the training queries and
pool with the initial model and with the trained one, mines with several
``(zone_quantile, epsilon)`` settings and prints, per setting, the zone size, the
fallbacks and :func:`neighbourhood_stats`: the share of the reference's other targets
(its scene family on the generated benchmark) above the gap, inside the zone, among the
stored candidates and among one epoch's drawn negatives (uniform draws: ``random_share``).

Usage::

    .venv/bin/python benchmarks/zone_neighbourhood.py --data-root data \\
        --checkpoint data/synthetic/06_models/best_checkpoint.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.data_sources.registry import benchmark
from dqe_cir_pipeline.datasets.feature_cache import FeatureCacheDataset
from dqe_cir_pipeline.model.backbone import BackboneConfig, load_backbone
from dqe_cir_pipeline.model.data import TrainData
from dqe_cir_pipeline.model.dqe import DQEConfig
from dqe_cir_pipeline.model.factory import build_model, model_from_checkpoint
from dqe_cir_pipeline.model.mining import (
    encode_for_mining,
    mine_from_embeddings,
    neighbourhood_stats,
    sampled_neighbour_share,
    zone_negatives,
)
from dqe_cir_pipeline.model.negatives import MiningConfig

SETTINGS = ((0.05, 0.01), (0.02, 0.01), (0.01, 0.01), (0.01, 0.0), (0.005, 0.01))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--benchmark", default="synthetic")
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--backbone", default=str(Path("models/tiny-blip2-synthetic").resolve()))
    args = parser.parse_args()
    root = args.data_root / args.benchmark
    triplets = pd.read_parquet(root / "02_intermediate/triplets.parquet")
    images = pd.read_parquet(root / "02_intermediate/images.parquet")
    features = FeatureCacheDataset(filepath=str(root / "04_feature/vit_cache")).load()
    backbone = load_backbone(BackboneConfig(name_or_path=args.backbone))
    data = TrainData.from_tables(triplets, images, "train", benchmark(args.benchmark).protocol)
    checkpoint = torch.load(args.checkpoint, weights_only=False)
    models = {
        "initial": build_model(backbone, DQEConfig(**checkpoint["config"]["model"]), 0, "cpu"),
        "trained": model_from_checkpoint(checkpoint, backbone, "cpu"),
    }
    print(
        "model    quantile epsilon  zone  hardest_below  widened  "
        + "  ".join(("above_gap", "in_zone", "stored_share", "sampled_share", "random_share"))
    )
    for name, model in models.items():
        model.eval()
        with torch.no_grad():
            queries, pool = encode_for_mining(
                model, features, backbone.tokenizer, data, amp_dtype=None
            )
        for quantile, epsilon in SETTINGS:
            cfg = MiningConfig(zone_quantile=quantile, epsilon=epsilon)
            result = mine_from_embeddings(queries, pool, data, cfg, torch.device("cpu"))
            stats = neighbourhood_stats(queries, pool, data, result, epsilon)
            drawn = zone_negatives(result, data, np.random.default_rng(0))
            summary = result.summary()
            print(
                f"{name:<8} {quantile:>8} {epsilon:>7} {summary['zone_size/mean']:>5.0f} "
                f"{summary['fallback/hardest_below']:>14.0f} {summary['fallback/widened']:>8.0f}  "
                f"{stats['neighbourhood/above_gap']:>9.3f} {stats['neighbourhood/in_zone']:>8.3f} "
                f"{stats['neighbourhood/stored_share']:>13.3f} "
                f"{sampled_neighbour_share(data, drawn):>14.3f} "
                f"{stats['neighbourhood/random_share']:>13.3f}"
            )


if __name__ == "__main__":
    main()
