"""The ablations' data: which tier, its parameters, and the prepared benchmark.

``prepare`` generates (or reuses) the tier's benchmark, reads it as a run reads it and
encodes every image once with the frozen backbone. The ViT tokens are kept in one
``.npy`` file under the tier's folder, keyed by the backbone's weights and every image's
id, path, size and modification time: a second process (``--jobs``) or a second
invocation memory-maps it instead of encoding 56,782 images again, and the operating
system's page cache shares it between the processes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dqe_cir_pipeline.config_loader import project_config_loader
from dqe_cir_pipeline.data_sources.image_check import default_workers
from dqe_cir_pipeline.data_sources.registry import ReadSettings, benchmark
from dqe_cir_pipeline.io_utils import atomic_save, atomic_write_json, short_hash, stable_hash
from dqe_cir_pipeline.model.backbone import Backbone, BackboneConfig, load_backbone
from dqe_cir_pipeline.model.data import train_captions
from dqe_cir_pipeline.model.extract import MemoryFeatures, VitEncoder, extract_to_memory

logger = logging.getLogger(__name__)

#: The generated benchmark's registry entry: its reader and its evaluation protocol (looked
#: up at import, so that spawned workers have the protocols registered too).
SYNTHETIC = benchmark("synthetic")
TIERS = ("unique", "ambiguous")


@dataclass(frozen=True)
class Setup:
    """Which benchmark the ablations run on and where their files go.

    Attributes:
        tier: ``unique`` (``conf/base``) or ``ambiguous`` (``conf/synthetic_ambiguous``).
        data: ``data.synthetic`` overrides (``--data key=value``).
        workdir: The benchmark, tiny backbone and features of the tier live under it.
        queries: Where the per-query files go (``None``: not written).
    """

    tier: str = "unique"
    data: tuple[tuple[str, Any], ...] = ()
    workdir: Path = Path("/tmp/dqe_ablations")
    queries: Path | None = None

    @property
    def root(self) -> Path:
        """The tier's own folder: the default tier keeps the former layout."""
        return self.workdir if self.tier == "unique" else self.workdir / self.tier


def base_params(setup: Setup | None = None) -> dict[str, Any]:
    """The tier's parameters (``conf/base``, or with ``conf/synthetic_ambiguous`` over it),
    read by the project's own config loader, with ``setup.data`` over ``data.synthetic``."""
    setup = setup or Setup()
    env = "base" if setup.tier == "unique" else "synthetic_ambiguous"
    params = project_config_loader(env)["parameters"]
    params["data"]["synthetic"] = {**params["data"]["synthetic"], **dict(setup.data)}
    return params


@functools.cache
def setup_record_base(setup: Setup, epochs: int | None) -> dict[str, Any]:
    """The tier, its data overrides, the epochs and a hash of the tier's parameters: what
    a row of the ablations depends on besides its recipe and seed (``--resume``)."""
    return {
        "tier": setup.tier,
        "data": [list(kv) for kv in setup.data],
        "epochs": epochs,
        "params": stable_hash(base_params(setup)),
    }


def test_families(setup: Setup, split: str = "test") -> dict[str, str]:
    """Query id -> its scene family (the reference image its family's queries share),
    read from the tier's generated captions (``captions/cap.<split>.json``).

    Raises:
        FileNotFoundError: The tier was not generated under ``setup.workdir``.
    """
    path = setup.root / "benchmark" / "captions" / f"cap.{split}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: --compare reads each query's scene family from the benchmark "
            "the runs used; give the run's --tier, --data and --workdir (or --cluster query)"
        )
    return {str(r["pairid"]): str(r["reference"]) for r in json.loads(path.read_text())}


def features_key(backbone_key: str, ids: list[str], paths: list[str]) -> str:
    """What the token file depends on: the encoder's weights and each image file."""
    files = []
    for image_id, path in zip(ids, paths, strict=True):
        st = os.stat(path)
        files.append([image_id, path, st.st_size, st.st_mtime_ns])
    return short_hash(json.dumps({"backbone": backbone_key, "files": files}))


def cached_features(
    folder: Path, backbone: Backbone, ids: list[str], paths: list[str], device: torch.device
) -> MemoryFeatures:
    """The images' ViT tokens: memory-mapped from ``folder`` when a file with this key is
    there, else encoded and written (atomically: an interrupted write leaves no file)."""
    key = features_key(backbone.key, ids, paths)
    tokens_path, ids_path = folder / f"tokens-{key}.npy", folder / f"ids-{key}.json"
    if tokens_path.exists() and ids_path.exists():
        logger.info("features reused from %s", tokens_path)
        return MemoryFeatures(json.loads(ids_path.read_text()), np.load(tokens_path, mmap_mode="r"))
    t0 = time.perf_counter()
    encoder = VitEncoder(backbone, device, batch_size=256)
    features = extract_to_memory(encoder, ids, paths)
    logger.info("extracted %d images in %.1fs", len(ids), time.perf_counter() - t0)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would add ".npy" to a name
            np.save(fh, features.get(ids), allow_pickle=False)

    atomic_save(tokens_path, write)
    atomic_write_json(ids_path, ids)  # last: the pair exists only once both are whole
    # the in-memory copy is dropped: every process maps the same file (one page cache)
    return MemoryFeatures(ids, np.load(tokens_path, mmap_mode="r"))


def prepare(root: Path, params: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The tier's tables, backbone and features (each made once under ``root``)."""
    block = SYNTHETIC.source({**params["data"]["synthetic"], "root": str(root / "benchmark")})
    if block.test_families < 1:
        raise ValueError("the ablations report on the test split: data.synthetic.test_families")
    folders = SYNTHETIC.folders(block)  # generated (or reused), then read as a run reads it
    tables = SYNTHETIC.read(
        folders.annotation_root,
        folders.image_root,
        block,
        ReadSettings(workers=default_workers(), image_check="decode"),
    )
    images, triplets = tables.images, tables.triplets
    bcfg = BackboneConfig(**{**params["backbone"], "tiny_dir": str(root / "tiny_backbone")})
    backbone = load_backbone(bcfg, train_captions(triplets))
    unique: pd.DataFrame = images.drop_duplicates("image_id")
    features = cached_features(
        root / "features",
        backbone,
        unique["image_id"].tolist(),
        unique["path"].tolist(),
        device,
    )
    return {"images": images, "triplets": triplets, "backbone": backbone, "features": features}
