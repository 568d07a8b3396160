"""Placeholder CIRR and FashionIQ trees: the real annotation layout, generated content.

For smoke runs and throughput checks of the real-data path without the datasets: the
annotation files have the real file names, record schema and (at ``scale=1``) the real
val/test sizes; the images are small generated pictures at the paths the readers
expect. Nothing here is meant to be learnable; the numbers a model reaches on it are
near chance and say nothing about the method.

Sizes at ``scale=1`` (queries, images), from the public annotation files:
CIRR rc2 val 4,181 / 2,297, test1 4,148 / 2,315; FashionIQ val dress 2,017 / 3,817,
shirt 2,038 / 6,346, toptee 1,961 / 5,373. Training splits are kept small
(``train_queries``): a smoke run needs a few training steps, not an epoch of 18k
triplets.

Under a user's own annotation files (``write_layout_images``, e.g. the real ones without
their images) the same pictures go at every path the split files list, and a missing
CIRR captions file can be filled with placeholder records (``write_cirr_captions``).

Kept free of Kedro and MLflow. Rerunning is cheap: files that exist are kept.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from dqe_cir_pipeline.data_sources.cirr import CIRRLayout
from dqe_cir_pipeline.data_sources.common import load_json
from dqe_cir_pipeline.data_sources.fashioniq import FashionIQLayout
from dqe_cir_pipeline.data_sources.layout import SPLIT, AnnotationLayout
from dqe_cir_pipeline.io_utils import atomic_write_bytes, atomic_write_json

CIRR_SIZES = {"val": (4181, 2297), "test1": (4148, 2315)}
FASHIONIQ_SIZES = {"dress": (2017, 3817), "shirt": (2038, 6346), "toptee": (1961, 5373)}
CIRR_SET_SIZE = 6  # CIRR's img_set: the reference, the target and four look-alikes
CIRR_TRAIN_QUERIES = 28225  # cap.rc2.train.json, when a copy lacks it

COLOURS = ["red", "blue", "green", "black", "white", "yellow", "pink", "grey", "purple", "orange"]
SHAPES = [
    "long sleeves",
    "short sleeves",
    "a v-neck",
    "a round collar",
    "stripes",
    "a floral print",
]
OBJECTS = ["dog", "car", "cup", "bottle", "chair", "bird", "lamp", "bag"]


@dataclass(frozen=True)
class PlaceholderConfig:
    """How big the placeholder tree is.

    Attributes:
        scale: fraction of the real val/test sizes (queries and images).
        train_queries: training triplets per benchmark (FashionIQ: split over categories).
        image_size: side of the generated images in pixels.
        seed: fixes captions, pairings and pictures.
        workers: threads that write images.
    """

    scale: float = 1.0
    train_queries: int = 1024
    image_size: int = 256
    seed: int = 0
    workers: int = 8

    def __post_init__(self) -> None:
        if not 0 < self.scale <= 1:
            raise ValueError(f"scale must lie in (0, 1], got {self.scale}")
        if self.train_queries < 8:
            raise ValueError(f"train_queries must be at least 8, got {self.train_queries}")


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, int(math.ceil(n * scale)))


def _rgb(key: str) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    digest = hashlib.sha256(key.encode()).digest()
    return (digest[0], digest[1], digest[2]), (digest[3], digest[4], digest[5]), digest[6]


def _picture(key: str, size: int) -> Image.Image:
    """A background, an ellipse and a bar whose colours and layout come from ``key``."""
    back, fore, layout = _rgb(key)
    img = Image.new("RGB", (size, size), back)
    draw = ImageDraw.Draw(img)
    a = size // 8 + layout % (size // 4)
    draw.ellipse([a, a, size - a, size - a // 2], fill=fore)
    draw.rectangle([0, size - size // 6, size * (1 + layout % 4) // 4, size], fill=fore[::-1])
    return img


def _write_image(path: Path, size: int) -> bool:
    if path.exists():
        return False
    buf = io.BytesIO()
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    _picture(path.stem, size).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
    return True


def write_images(paths: Iterable[Path], size: int, workers: int = 8) -> int:
    """Write a placeholder picture at every path that does not exist yet; return how many."""
    todo = list(paths)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sum(pool.map(lambda p: _write_image(p, size), todo))


# --- CIRR ------------------------------------------------------------------------------


def _cirr_caption(rng: np.random.Generator) -> str:
    colour, obj, other = rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(OBJECTS)
    forms = [
        f"make the {obj} {colour}",
        f"replace the {obj} with a {colour} {other}",
        f"show two {obj}s instead of one",
        f"change the background to {colour} and remove the {other}",
    ]
    return str(forms[int(rng.integers(len(forms)))])


def _cirr_records(
    names: list[str], n_queries: int, labelled: bool, rng: np.random.Generator, pair_start: int
) -> list[dict[str, Any]]:
    """CIRR caption records over ``names`` taken as consecutive sets of six images."""
    n_sets = max(1, len(names) // CIRR_SET_SIZE)
    records = []
    for q in range(n_queries):
        s = q % n_sets
        members = names[s * CIRR_SET_SIZE : (s + 1) * CIRR_SET_SIZE]
        ref_pos, tgt_pos = rng.choice(len(members), 2, replace=False)
        rec: dict[str, Any] = {
            "pairid": pair_start + q,
            "reference": members[int(ref_pos)],
            "caption": _cirr_caption(rng),
            "img_set": {"id": s, "members": members, "reference_rank": int(ref_pos)},
        }
        if labelled:
            target = members[int(tgt_pos)]
            rec["target_hard"] = target
            rec["target_soft"] = {target: 1.0}
            rec["img_set"]["target_rank"] = int(tgt_pos)
        records.append(rec)
    return records


def _cirr_split(
    annotations: Path,
    images: Path,
    split: str,
    n_queries: int,
    n_images: int,
    labelled: bool,
    rng: np.random.Generator,
    pair_start: int,
) -> list[Path]:
    prefix = "dev" if split == "val" else split
    n_sets = max(1, n_images // CIRR_SET_SIZE)
    names = [
        f"{prefix}-{s}-{k // 2}-img{k % 2}" for s in range(n_sets) for k in range(CIRR_SET_SIZE)
    ]
    rel = {
        n: (f"./train/{i % 100}/{n}.png" if split == "train" else f"./{prefix}/{n}.png")
        for i, n in enumerate(names)
    }
    records = _cirr_records(names, n_queries, labelled, rng, pair_start)
    # the files the CIRR reader opens; record keys keep the order of the real files
    layout = CIRRLayout(annotations, (split,), version="rc2", image_only_splits=())
    atomic_write_json(layout.caption_file(split), records, indent=None, sort_keys=False)
    atomic_write_json(layout.split_file(split), rel, indent=None, sort_keys=False)
    return [images / r[2:] for r in rel.values()]


def write_cirr(root: Path, cfg: PlaceholderConfig) -> dict[str, Any]:
    """``<root>/annotations`` (captions/, image_splits/) and ``<root>/images`` for rc2
    train, val and test1. Returns counts per split and the number of images written."""
    rng = np.random.default_rng([cfg.seed, 1])
    annotations, images = root / "annotations", root / "images"
    sizes = {
        "train": (cfg.train_queries, cfg.train_queries),
        **{
            s: (_scaled(q, cfg.scale, 8), _scaled(n, cfg.scale, 2 * CIRR_SET_SIZE))
            for s, (q, n) in CIRR_SIZES.items()
        },
    }
    paths: list[Path] = []
    counts: dict[str, Any] = {}
    pair = 0
    for split, (n_q, n_img) in sizes.items():
        written = _cirr_split(annotations, images, split, n_q, n_img, split != "test1", rng, pair)
        pair += n_q
        paths += written
        counts[split] = {"queries": n_q, "images": len(written)}
    counts["images_written"] = write_images(paths, cfg.image_size, cfg.workers)
    return counts


# --- FashionIQ -------------------------------------------------------------------------


def _asin(category: str, split: str, i: int) -> str:
    digest = hashlib.sha256(f"{category}/{split}/{i}".encode()).hexdigest().upper()
    return "B" + digest[:9]


def _fiq_captions(rng: np.random.Generator) -> list[str]:
    colour, shape, other = rng.choice(COLOURS), rng.choice(SHAPES), rng.choice(COLOURS)
    forms = [
        [f"is {colour} with {shape}", f"is more {other} and less fitted"],
        [f"is {colour}", "is longer and more casual"],
        [f"has {shape}", "is more elegant"],
        ["is less formal", "is shorter"],
    ]
    return forms[int(rng.integers(len(forms)))]


def write_fashioniq(root: Path, cfg: PlaceholderConfig) -> dict[str, Any]:
    """``<root>/annotations`` and ``<root>/images/<asin>.jpg`` for dress, shirt and toptee,
    train and val. Returns counts per category and split."""
    rng = np.random.default_rng([cfg.seed, 2])
    annotations, images = root / "annotations", root / "images"
    per_cat_train = max(4, cfg.train_queries // len(FASHIONIQ_SIZES))
    counts: dict[str, Any] = {}
    paths: list[Path] = []
    for category, (val_q, val_n) in FASHIONIQ_SIZES.items():
        sizes = {
            "train": (per_cat_train, max(8, per_cat_train * 3 // 2)),
            "val": (_scaled(val_q, cfg.scale, 4), _scaled(val_n, cfg.scale, 8)),
        }
        layout = FashionIQLayout(annotations, (category,), tuple(sizes), image_exts=("jpg",))
        for split, (n_q, n_img) in sizes.items():
            ids = [_asin(category, split, i) for i in range(n_img)]
            records = []
            for _ in range(n_q):
                cand, target = rng.choice(n_img, 2, replace=False)
                records.append(
                    {
                        "target": ids[int(target)],
                        "candidate": ids[int(cand)],
                        "captions": _fiq_captions(rng),
                    }
                )
            # the files the FashionIQ reader opens
            atomic_write_json(
                layout.caption_file(category, split), records, indent=None, sort_keys=False
            )
            atomic_write_json(layout.split_file(category, split), ids, indent=None, sort_keys=False)
            paths += [images / layout.image_names(i)[0] for i in ids]
            counts[f"{category}/{split}"] = {"queries": n_q, "images": n_img}
    counts["images_written"] = write_images(paths, cfg.image_size, cfg.workers)
    return counts


# --- placeholder images under given annotation files -----------------------------------


def write_layout_images(
    layout: AnnotationLayout, image_root: Path, size: int, workers: int = 8
) -> dict[str, Any]:
    """A placeholder picture at the path the reader expects for every image the split
    files of ``layout`` list (e.g. the real annotation files, without their images).

    Returns:
        Images listed per split file (``"<category>/<split>"``, CIRR's category is
        ``all``), the distinct images and how many pictures were written (files that
        exist are kept).
    """
    counts: dict[str, Any] = {}
    paths: dict[Path, None] = {}  # an image listed by two split files is written once
    for file in layout.files():
        if file.kind != SPLIT:
            continue
        listed = layout.image_files(load_json(file.path), image_root)
        counts[f"{file.category}/{file.split}"] = len(listed)
        paths.update(dict.fromkeys(candidates[0] for candidates in listed.values()))
    counts["images"] = len(paths)
    counts["images_written"] = write_images(paths, size, workers)
    return counts


def write_cirr_captions(layout: CIRRLayout, split: str, n_queries: int, seed: int = 0) -> int:
    """Placeholder CIRR caption records for ``split`` over the images its split file lists
    (taken in file order as sets of six), written where the reader looks for them: for a
    copy of CIRR without that captions file (the train captions are not always shipped).

    Returns:
        The number of records written.
    """
    names = list(layout.image_files(load_json(layout.split_file(split)), Path(".")))
    if len(names) < 2:
        raise ValueError(f"{layout.split_file(split)} lists {len(names)} images, needs 2")
    rng = np.random.default_rng([seed, 3])
    records = _cirr_records(names, n_queries, True, rng, 0)
    atomic_write_json(layout.caption_file(split), records, indent=None, sort_keys=False)
    return len(records)


def write_benchmark(
    benchmark: str, raw_root: str | os.PathLike[str], cfg: PlaceholderConfig
) -> dict[str, Any]:
    """Write the placeholder tree of ``benchmark`` ("cirr" | "fashioniq") under ``raw_root``."""
    root = Path(raw_root)
    if benchmark == "cirr":
        return write_cirr(root, cfg)
    if benchmark == "fashioniq":
        return write_fashioniq(root, cfg)
    raise ValueError(f"benchmark must be 'cirr' or 'fashioniq', got {benchmark!r}")
