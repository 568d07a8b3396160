"""The trained query side of DQE-CIR as one object, and its ``save_pretrained`` export.

A :class:`QueryModel` embeds queries on new images and gallery images exactly as
evaluation does (ViT tokens rounded to float16 like the feature cache, then the same
encode path). ``version`` hashes the trained weights. Export layout: docs/serving.md.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, Blip2Config, Blip2ForImageTextRetrieval

from dqe_cir_pipeline.model.backbone import Backbone, encode_vit
from dqe_cir_pipeline.model.data import FeatureSource
from dqe_cir_pipeline.model.device import resolve_device
from dqe_cir_pipeline.model.dqe import DQECIR, DQEConfig
from dqe_cir_pipeline.model.encode import encode_images, encode_queries
from dqe_cir_pipeline.model.extract import MemoryFeatures
from dqe_cir_pipeline.model.factory import model_from_checkpoint
from dqe_cir_pipeline.model.lavis_tower import retrieval_model
from dqe_cir_pipeline.model.preprocess import ImagePreprocessor
from dqe_cir_pipeline.serving.folders import write_folder

MODEL_TYPE = "dqe_cir"
EXPORT_FORMAT = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_DQE_PREFIX = "dqe."
_VISION_PREFIX = "vision_model."


class ExportFormatError(ValueError):
    """A folder is not a DQE-CIR export this code can read."""


def weights_version(state: Mapping[str, torch.Tensor]) -> str:
    """16 hex characters identifying a state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class QueryModel:
    """Frozen ViT + trained DQE-CIR + tokenizer + preprocessing, in eval mode.

    Built by :meth:`from_checkpoint` or :meth:`from_pretrained`; immutable (``deepcopy``
    returns it). ``version``: :func:`weights_version` of the DQE-CIR module; ``info``: what
    the export records about training (data, metrics).
    """

    def __init__(
        self,
        retrieval: Blip2ForImageTextRetrieval,
        dqe: DQECIR,
        tokenizer: Any,
        preprocessor: ImagePreprocessor,
        backbone_key: str,
        backbone_name: str,
        max_text_len: int,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        self._retrieval = retrieval.eval()
        self.dqe = dqe.eval()
        self.tokenizer = tokenizer
        self.preprocessor = preprocessor
        self.backbone_key = backbone_key
        self.backbone_name = backbone_name
        self.max_text_len = int(max_text_len)
        self.info = dict(info or {})
        self.version = weights_version(self.dqe.state_dict())

    def __deepcopy__(self, memo: dict[int, Any]) -> QueryModel:
        return self

    def __repr__(self) -> str:
        return (
            f"QueryModel(version={self.version!r}, backbone={self.backbone_key!r}, "
            f"tokens={self.num_query_tokens}, dim={self.projection_dim})"
        )

    @property
    def device(self) -> torch.device:
        return next(self.dqe.parameters()).device

    @property
    def num_query_tokens(self) -> int:
        """Q: token embeddings per gallery image."""
        return int(self.dqe.num_query_tokens)

    @property
    def projection_dim(self) -> int:
        """P: the embedding width."""
        return int(self.dqe.text_projection.out_features)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Mapping[str, Any],
        backbone: Backbone,
        device: str = "cpu",
        info: Mapping[str, Any] | None = None,
    ) -> QueryModel:
        """The trained model a checkpoint describes, on its backbone (checked by key)."""
        dqe = model_from_checkpoint(dict(checkpoint), backbone, device)
        backbone.model.vision_model.to(dqe.query_tokens.device)
        saved = checkpoint.get("backbone", {})
        return cls(
            backbone.model,
            dqe,
            backbone.tokenizer,
            backbone.preprocessor,
            backbone_key=backbone.key,
            backbone_name=str(saved.get("name", backbone.name)),
            max_text_len=backbone.max_text_len,
            info=info,
        )

    def config(self) -> dict[str, Any]:
        """The export's ``config.json``."""
        return {
            "model_type": MODEL_TYPE,
            "architectures": ["DQECIR"],
            "format": EXPORT_FORMAT,
            "version": self.version,
            "backbone": {"key": self.backbone_key, "name": self.backbone_name},
            "dqe": asdict(self.dqe.cfg),
            "max_text_len": self.max_text_len,
            "num_query_tokens": self.num_query_tokens,
            "projection_dim": self.projection_dim,
            "preprocessing": self.preprocessor.settings(),
            "blip2_config": json.loads(self._retrieval.config.to_json_string()),
            "training": self.info,
        }

    def save_pretrained(self, folder: str | Path, model_card: str | None = None) -> Path:
        """Write the export folder (atomically: a half-written folder is never visible)."""
        weights = {
            _DQE_PREFIX + k: v.detach().cpu().contiguous().clone()
            for k, v in self.dqe.state_dict().items()
        }
        weights.update(
            {
                _VISION_PREFIX + k: v.detach().cpu().contiguous().clone()
                for k, v in self._retrieval.vision_model.state_dict().items()
            }
        )

        def write(tmp: Path) -> None:
            save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            self.tokenizer.save_pretrained(str(tmp))
            config = json.dumps(self.config(), indent=2, sort_keys=True, default=str)
            (tmp / CONFIG_FILE).write_text(config + "\n")
            (tmp / "README.md").write_text(model_card or model_card_text(self.config()))

        return write_folder(folder, write)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> QueryModel:
        """Load an export folder written by :meth:`save_pretrained`.

        ExportFormatError: files missing, another format, or weights not hashing to its version.
        """
        root = Path(folder)
        config = read_export_config(root)
        blip2 = Blip2Config.from_dict(config["blip2_config"])
        tensors = load_file(str(root / WEIGHTS_FILE))
        vision = {
            k[len(_VISION_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_VISION_PREFIX)
        }
        head = {k[len(_DQE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(_DQE_PREFIX)}
        with torch.random.fork_rng(devices=[]):  # construction draws random inits
            retrieval = retrieval_model(blip2)  # with the CLIP tower a LAVIS ViT-L needs
            retrieval.vision_model.load_state_dict(vision, strict=True)
            retrieval.vision_model.requires_grad_(False)
            dqe = DQECIR(retrieval, DQEConfig(**config["dqe"]))
        try:
            dqe.load_state_dict(head, strict=True)
        except RuntimeError as err:
            raise ExportFormatError(f"{root / WEIGHTS_FILE}: weights do not fit ({err})") from err
        target = resolve_device(device)
        retrieval.vision_model.to(target)
        dqe.to(target)
        prep = config["preprocessing"]
        model = cls(
            retrieval,
            dqe,
            AutoTokenizer.from_pretrained(str(root), config=blip2),  # not our config.json
            ImagePreprocessor(
                int(prep["image_size"]),
                float(prep["target_pad_ratio"]),
                tuple(prep["mean"]),
                tuple(prep["std"]),
            ),
            backbone_key=config["backbone"]["key"],
            backbone_name=config["backbone"]["name"],
            max_text_len=int(config["max_text_len"]),
            info=config.get("training", {}),
        )
        if model.version != config["version"]:
            raise ExportFormatError(
                f"{root / WEIGHTS_FILE}: weights hash to version {model.version}, "
                f"{root / CONFIG_FILE} says {config['version']} (a partial copy?)"
            )
        return model

    @torch.no_grad()
    def vit_tokens(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Frozen-ViT tokens of decoded images, float16 as the feature cache stores them."""
        pixels = self.preprocessor.batch(list(images)).to(self.device)
        return encode_vit(self._retrieval, pixels).to(torch.float16).cpu().numpy()

    def encode_queries(
        self, images: Sequence[Image.Image], texts: Sequence[str], batch_size: int = 64
    ) -> torch.Tensor:
        """Composed-query embeddings (N, P), float32 on CPU."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images for {len(texts)} texts")
        out = []
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            ids = [str(i) for i in range(len(batch))]
            feats = MemoryFeatures(ids, self.vit_tokens(batch))
            out.append(
                encode_queries(
                    self.dqe,
                    feats,
                    self.tokenizer,
                    ids,
                    list(texts[start : start + batch_size]),
                    max_len=self.max_text_len,
                    amp_dtype=None,
                ).q
            )
        return torch.cat(out)

    def encode_gallery(self, features: FeatureSource, ids: Sequence[str]) -> torch.Tensor:
        """Gallery embeddings (M, Q, P) from cached ViT tokens (a feature cache)."""
        return encode_images(self.dqe, features, list(ids), amp_dtype=None)

    def encode_gallery_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Gallery embeddings (M, Q, P) of decoded images (the ViT runs here)."""
        ids = [str(i) for i in range(len(images))]
        return self.encode_gallery(MemoryFeatures(ids, self.vit_tokens(images)), ids)


def read_export_config(root: Path) -> dict[str, Any]:
    """The export's ``config.json``, checked to be a DQE-CIR export of a known format."""
    path = root / CONFIG_FILE
    if not path.is_file() or not (root / WEIGHTS_FILE).is_file():
        raise ExportFormatError(
            f"{root}: not a DQE-CIR export folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    config = json.loads(path.read_text())
    if config.get("model_type") != MODEL_TYPE or config.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(
            f"{path}: model_type {config.get('model_type')!r} format {config.get('format')!r}; "
            f"this code reads model_type {MODEL_TYPE!r} format {EXPORT_FORMAT}"
        )
    return config


def model_card_text(config: Mapping[str, Any]) -> str:
    """A short model card (README.md): what the model is, its data, metrics and limits."""
    training = dict(config.get("training", {}))
    metrics = training.get("metrics", {})
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in metrics.items()) or "| - | - |"
    return f"""---
library_name: dqe_cir_pipeline
tags: [composed-image-retrieval, blip-2, dqe-cir]
---

# DQE-CIR query model ({training.get("dataset", "unknown data")})

Composed image retrieval: a reference image and a modification text give one query
embedding; gallery images are scored by the maximum inner product over their
{config["num_query_tokens"]} token embeddings (width {config["projection_dim"]}).
Trained by `kedro run --pipelines=train` (DQE-CIR head on a BLIP-2 Q-Former, frozen ViT).

- Version (hash of the weights): `{config["version"]}`
- Backbone: `{config["backbone"]["name"]}` (key `{config["backbone"]["key"]}`)
- Training data: {training.get("dataset", "?")} (fingerprint `{training.get("fingerprint", "?")}`),
  best epoch {training.get("epoch", "?")} selected on {training.get("selection_split", "?")}

## Metrics ({training.get("split", "?")} split, percent)

| metric | value |
|---|---|
{rows}

## Use

```python
from dqe_cir_pipeline.serving import QueryModel, GalleryIndex, Searcher
searcher = Searcher(QueryModel.from_pretrained("<this folder>"), GalleryIndex.load("<index>"))
searcher.search("reference.png", "make it red", k=10)
```

## Limits

- Trained on {training.get("dataset", "?")} only: images unlike its training images (other
  domains, sizes, styles) are out of distribution and retrieve poorly.
- Texts longer than {config["max_text_len"]} tokens are truncated; the tokenizer only knows
  the vocabulary of its backbone.
- A gallery index embedded by another version of this model is refused: rebuild it.
"""
