"""Shape rehearsal: full-size tensors through extraction, one DQE-CIR training step and
evaluation, on a handful of images on a CPU.

Two vision towers with random weights, each at its real width and token count but with
``--depth`` blocks (the real ones have 23 / 39, too slow for a CPU and irrelevant to the
shapes that flow downstream):

* ``vitl``: LAVIS's CLIP ViT-L/14 tower as ``model/lavis_tower.py`` builds it for a
  converted ``pretrain_vitL`` checkpoint: 257 tokens x 1024;
* ``vitg``: transformers' ``Blip2VisionModel`` at the ``blip2-itm-vit-g`` widths:
  257 tokens x 1408.

Both feed the real Q-Former: 32 query tokens, hidden 768, 12 heads, 12 layers
(``--qformer-layers``) with cross-attention every second layer at the vision width,
BERT's 30,523-word vocabulary, 256-d projections. Steps, each timed with its peak RSS:

1. ``build``: the random model, the tokenizer (WordPiece over the captions: no download);
2. ``extraction``: ``model.extract.VitEncoder`` on generated 224-px pictures -> (n, 257, D);
3. ``mining``: the initial negatives mined with the model (``Trainer.plan_epoch``);
4. ``train_step``: one optimisation step of DQE-CIR on the cached tokens
   (``Trainer.train_epoch`` with the batch = all ``--images`` queries: ``model/batch.py``
   gathers it, ``model/losses.py`` scores it, AdamW steps);
5. ``evaluation``: ``model.evaluate.evaluate`` with CIRR's protocol over the images.

Usage (figures: docs/real_data.md §13)::

    PYTHONPATH=src python benchmarks/bench_full_shapes.py --presets vitl vitg --images 4
    PYTHONPATH=src python benchmarks/bench_full_shapes.py --presets vitl --images 2 --depth 1 \\
        --qformer-layers 2 --out /tmp/shapes.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent / "src", HERE):  # this checkout before any installed copy
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _measure import measure, rss_bytes  # noqa: E402
from _real_data_smoke import FULL_SIZE  # noqa: E402

from dqe_cir_pipeline.data_sources.placeholder import write_images  # noqa: E402
from dqe_cir_pipeline.model.backbone import (  # noqa: E402
    Backbone,
    TinyBackboneSpec,
    tiny_blip2_config,
    train_wordpiece_tokenizer,
)
from dqe_cir_pipeline.model.batch import BatchSource  # noqa: E402
from dqe_cir_pipeline.model.data import TrainData  # noqa: E402
from dqe_cir_pipeline.model.distributed import SINGLE  # noqa: E402
from dqe_cir_pipeline.model.evaluate import EvalSet, evaluate  # noqa: E402
from dqe_cir_pipeline.model.extract import MemoryFeatures, VitEncoder  # noqa: E402
from dqe_cir_pipeline.model.factory import build_model  # noqa: E402
from dqe_cir_pipeline.model.lavis_tower import CLIP_TOWER, MARKER, retrieval_model  # noqa: E402
from dqe_cir_pipeline.model.negatives import MiningConfig  # noqa: E402
from dqe_cir_pipeline.model.preprocess import ImagePreprocessor  # noqa: E402
from dqe_cir_pipeline.model.protocol import CIRR_SUBSET_KS, BenchmarkProtocol  # noqa: E402
from dqe_cir_pipeline.model.run_state import RunState  # noqa: E402
from dqe_cir_pipeline.model.train import Trainer  # noqa: E402
from dqe_cir_pipeline.model.train_config import LoopConfig, TrainingConfig  # noqa: E402

T = TypeVar("T")
GIB = 2**30
#: The vision towers' real widths (tokens: 1 + (224 / 14)^2 = 257 for both).
PRESETS = {
    "vitl": {"vision_hidden": 1024, "vision_mlp": 4096, "vision_heads": 16},
    "vitg": {"vision_hidden": FULL_SIZE.vision_hidden, "vision_mlp": FULL_SIZE.vision_mlp},
}
WORDS = ["make", "the", "dog", "red", "blue", "shirt", "longer", "with", "stripes", "two"]
PROTOCOL = BenchmarkProtocol(subset_ks=CIRR_SUBSET_KS)  # CIRR's: global and subset recall


def spec_for(preset: str, depth: int, qformer_layers: int) -> TinyBackboneSpec:
    """The ``blip2-itm-vit-g`` shapes with ``preset``'s vision widths and the given depths."""
    return replace(FULL_SIZE, **PRESETS[preset], vision_layers=depth, qformer_layers=qformer_layers)


def build_backbone(preset: str, spec: TinyBackboneSpec, captions: list[str]) -> Backbone:
    """A random BLIP-2 of ``spec``; for ``vitl`` with the LAVIS CLIP tower in place of the
    ViT (the config marks it as a converted ``pretrain_vitL`` folder's does)."""
    torch.manual_seed(spec.seed)
    config = tiny_blip2_config(spec)
    if preset == "vitl":
        setattr(config, MARKER, {"tower": CLIP_TOWER, "depth": spec.vision_layers})
    model = retrieval_model(config)
    model.vision_model.requires_grad_(False)
    model.vision_model.eval()
    tokenizer = train_wordpiece_tokenizer(captions, spec.vocab_size, 32)
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        preprocessor=ImagePreprocessor(spec.image_size),
        key=f"random-{preset}",
        name=f"random {preset}",
        max_text_len=32,
    )


def make_queries(ids: list[str], captions: list[str]) -> tuple[TrainData, EvalSet]:
    """One query per image (target: the next image), the images as pool and gallery."""
    n = len(ids)
    ref = np.arange(n)
    tgt = (ref + 1) % n
    flags = np.arange(n) % 2 == 0
    data = TrainData(
        query_ids=[f"q{i}" for i in range(n)],
        reference_ids=[ids[i] for i in ref],
        target_ids=[ids[i] for i in tgt],
        captions_train=[[c, f"{c} please"] for c in captions],
        caption_eval=captions,
        edits_color=flags,
        edits_shape=~flags,
        pool_ids=ids,
        target_idx=tgt.astype(np.int64),
        reference_idx=ref.astype(np.int64),
    )
    val = EvalSet(
        dataset="cirr",
        split="val",
        query_ids=data.query_ids,
        reference_ids=data.reference_ids,
        target_ids=list(data.target_ids),
        texts=captions,
        edit_types=["color" if f else "shape" for f in flags],
        categories=["all"] * n,
        subset_members=[list(ids) for _ in range(n)],
        gallery_ids=ids,
        gallery_categories=["all"] * n,
    )
    return data, val


def timed(steps: dict[str, dict[str, Any]], name: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` as step ``name``: seconds, peak RSS and its growth over the step."""
    base = rss_bytes()
    seconds, growth, out = measure(fn)
    steps[name] = {
        "seconds": seconds,
        "peak_rss_gib": (base + growth) / GIB,
        "rss_growth_gib": growth / GIB,
    }
    return out


def _params(module: torch.nn.Module, trainable: bool | None = None) -> int:
    return sum(p.numel() for p in module.parameters() if trainable in (None, p.requires_grad))


def rehearse(preset: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every step for one vision tower; returns its figures."""
    spec = spec_for(preset, args.depth, args.qformer_layers)
    rng = np.random.default_rng(0)
    captions = [" ".join(rng.choice(WORDS, 6)) for _ in range(args.images)]
    ids = [f"{preset}-img{i}" for i in range(args.images)]
    paths = [work / f"{i}.png" for i in ids]
    write_images(paths, args.image_side, workers=1)
    steps: dict[str, dict[str, Any]] = {}
    bb = timed(steps, "build", lambda: build_backbone(preset, spec, captions))
    device = torch.device("cpu")
    encoder = VitEncoder(bb, device, batch_size=args.images, amp_dtype=None)
    tokens = timed(steps, "extraction", lambda: encoder([str(p) for p in paths]))
    features = MemoryFeatures(ids, tokens)
    data, val = make_queries(ids, captions)
    config = TrainingConfig(loop=LoopConfig(epochs=1, batch_size=args.images, run_dir=None))
    model = build_model(bb, config.model, 0, "cpu")
    source = BatchSource(data, features, bb.tokenizer, bb.max_text_len)
    trainer = Trainer(model, config, MiningConfig(), source, device, None, SINGLE)
    state = RunState.start(
        trainer.trainables, {}, {"key": bb.key, "name": bb.name}, config.loop, SINGLE
    )
    plan = timed(steps, "mining", lambda: trainer.plan_epoch(0, state, None))
    record = timed(steps, "train_step", lambda: trainer.train_epoch(plan))
    result = timed(
        steps,
        "evaluation",
        lambda: evaluate(model, features, bb.tokenizer, val, amp_dtype=None, protocol=PROTOCOL),
    )
    return {
        "shapes": {
            "vit_tokens": list(tokens.shape),
            "query_tokens": list(bb.model.query_tokens.shape),
            "qformer_hidden": bb.model.config.qformer_config.hidden_size,
            "qformer_heads": bb.model.config.qformer_config.num_attention_heads,
            "cross_attention_width": bb.model.config.qformer_config.encoder_hidden_size,
            "vision_tower": type(bb.model.vision_model).__name__,
        },
        "parameters": {
            "vision": _params(bb.model.vision_model),
            "trainable": _params(model, True),
        },
        "spec": {"vision_layers": spec.vision_layers, "qformer_layers": spec.qformer_layers},
        "steps": steps,
        "loss": record["train/loss"],
        "recall@1": result.metrics.get("recall@1"),
    }


def table(preset: str, rep: dict[str, Any]) -> str:
    s = rep["shapes"]
    lines = [
        f"== {preset}: ViT tokens {s['vit_tokens']} ({s['vision_tower']}, "
        f"{rep['spec']['vision_layers']} blocks), {s['query_tokens'][1]} queries x "
        f"{s['qformer_hidden']} ({s['qformer_heads']} heads, {rep['spec']['qformer_layers']} "
        f"layers, cross-attention {s['cross_attention_width']}); "
        f"{rep['parameters']['trainable'] / 1e6:.1f} M trainable parameters",
        f"   {'step':<12}{'seconds':>9}{'peak RSS GiB':>14}{'growth GiB':>12}",
    ]
    for name, v in rep["steps"].items():
        lines.append(
            f"   {name:<12}{v['seconds']:>9.2f}{v['peak_rss_gib']:>14.2f}"
            f"{v['rss_growth_gib']:>12.2f}"
        )
    lines.append(f"   loss {rep['loss']:.4f}, recall@1 {rep['recall@1']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", nargs="+", default=["vitl", "vitg"], choices=sorted(PRESETS))
    ap.add_argument("--images", type=int, default=4, help="images = queries = the batch")
    ap.add_argument("--depth", type=int, default=2, help="vision blocks kept")
    ap.add_argument("--qformer-layers", type=int, default=FULL_SIZE.qformer_layers)
    ap.add_argument("--image-side", type=int, default=256, help="generated picture side")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.images < 3:
        ap.error(
            "--images must be at least 3 (a query's pool needs a negative besides its "
            "reference and target)"
        )
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    report["threads"] = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            report[preset] = rehearse(preset, args, Path(tmp))
            print(table(preset, report[preset]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
