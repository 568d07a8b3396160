"""Chance levels of the evaluation protocols on the real annotation structures.

Random embeddings on FashionIQ val (per-category galleries, reference kept) and CIRR val
(whole gallery, reference removed; Recall_subset over img_set.members) must give what
theory says: R@K ~ K / M (CIRR: K / (M - 1)), Rs@1 ~ 1/5 (5 members after removing the
reference). A protocol bug (reference not removed, subset wrong) shows up here at once.
Reads only the annotation JSON files (no images)::

    PYTHONPATH=src .venv/bin/python benchmarks/chance_levels.py \
        --annotations /path/to/annotations
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from dqe_cir_pipeline.data_sources.fashioniq import eval_caption
from dqe_cir_pipeline.data_sources.registry import benchmark
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate_embeddings


def random_embeddings(
    n: int, m: int, tokens: int, dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    gallery = torch.nn.functional.normalize(torch.randn(m, tokens, dim, generator=g), dim=-1)
    return q, gallery


def cirr_val(root: Path) -> EvalSet:
    records = json.loads((root / "cirr/captions/cap.rc2.val.json").read_text())
    gallery = sorted(json.loads((root / "cirr/image_splits/split.rc2.val.json").read_text()))
    return EvalSet(
        dataset="cirr",
        split="val",
        query_ids=[str(r["pairid"]) for r in records],
        reference_ids=[r["reference"] for r in records],
        target_ids=[r["target_hard"] for r in records],
        texts=[r["caption"] for r in records],
        edit_types=["other"] * len(records),
        categories=["all"] * len(records),
        subset_members=[r["img_set"]["members"] for r in records],
        gallery_ids=gallery,
        gallery_categories=["all"] * len(gallery),
    )


def fashioniq_val(root: Path) -> EvalSet:
    q_ids, refs, tgts, texts, cats, g_ids, g_cats = [], [], [], [], [], [], []
    for cat in ("dress", "shirt", "toptee"):
        records = json.loads((root / f"fashioniq/captions/cap.{cat}.val.json").read_text())
        for i, r in enumerate(records):
            q_ids.append(f"{cat}-val-{i}")
            refs.append(r["candidate"])
            tgts.append(r["target"])
            texts.append(eval_caption(*r["captions"]))
            cats.append(cat)
        split = json.loads((root / f"fashioniq/image_splits/split.{cat}.val.json").read_text())
        g_ids += split
        g_cats += [cat] * len(split)
    return EvalSet(
        dataset="fashioniq",
        split="val",
        query_ids=q_ids,
        reference_ids=refs,
        target_ids=tgts,
        texts=texts,
        edit_types=["other"] * len(q_ids),
        categories=cats,
        subset_members=[[] for _ in q_ids],
        gallery_ids=g_ids,
        gallery_categories=g_cats,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    for name, data in (
        ("CIRR val", cirr_val(args.annotations)),
        ("FashionIQ val", fashioniq_val(args.annotations)),
    ):
        m = len(data.gallery_ids)
        runs = []
        for seed in range(args.seeds):
            q, g = random_embeddings(len(data.query_ids), m, 4, 32, seed)
            protocol = benchmark(data.dataset).protocol
            runs.append(evaluate_embeddings(q, None, g, data, protocol=protocol).metrics)
        keys = [k for k in runs[0] if "recall" in k and k.count("/") <= 1 or k == "avg"]
        print(f"{name}: {len(data.query_ids)} queries, gallery {m} (mean of {args.seeds} seeds)")
        for k in keys:
            print(f"  {k:24s} {sum(r[k] for r in runs) / len(runs):6.2f}")
        if data.dataset == "cirr":
            print(f"  theory: R@K = 100 K / {m - 1}; Rs@1 = 20.00, Rs@2 = 40.00, Rs@3 = 60.00")
        else:
            sizes = {
                c: data.gallery_categories.count(c) for c in sorted(set(data.gallery_categories))
            }
            print(f"  theory: R@K = 100 K / M_cat with M = {sizes}")


if __name__ == "__main__":
    main()
