"""Image preprocessing shared by training, caching and evaluation (CLIP4Cir, SPRC, QuRe).

RGB, target pad to ``ratio``, bicubic resize of the short side, centre crop, CLIP mean /
std. No augmentation, so ViT tokens can be cached; PIL + numpy with the arithmetic of
torchvision's ``Resize(int)`` / ``CenterCrop``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# Bump when the transform's arithmetic changes: it is part of every feature-cache key.
_PREPROCESS_VERSION = 1


def target_pad(img: Image.Image, ratio: float) -> Image.Image:
    """Pad the short side (black, centred) so the aspect ratio becomes ``ratio``.

    Only images already at ``ratio`` or beyond; each side gets ``int((long / ratio - short) / 2)``
    pixels, those methods' rounding.
    """
    w, h = img.size
    long, short = max(w, h), min(w, h)
    if long / short < ratio:
        return img
    pad = max(int((long / ratio - short) / 2), 0)
    if pad == 0:
        return img
    new_w, new_h = (w, h + 2 * pad) if w >= h else (w + 2 * pad, h)
    canvas = Image.new("RGB", (new_w, new_h), (0, 0, 0))
    canvas.paste(img, ((new_w - w) // 2, (new_h - h) // 2))
    return canvas


@dataclass
class ImagePreprocessor:
    """PIL image -> normalised (3, S = ``image_size``, S) float32, identical for train and eval."""

    image_size: int
    target_pad_ratio: float = 1.25
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """One image (any mode) -> (3, S, S) float32, normalised."""
        s = self.image_size
        img = target_pad(img.convert("RGB"), self.target_pad_ratio)
        w, h = img.size
        if w <= h:
            new_w, new_h = s, int(s * h / w)
        else:
            new_w, new_h = int(s * w / h), s
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top = int(round((new_h - s) / 2.0))
        left = int(round((new_w - s) / 2.0))
        img = img.crop((left, top, left + s, top + s))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """B images -> (B, 3, S, S)."""
        return torch.stack([self(im) for im in images])

    def settings(self) -> dict[str, object]:
        """Everything that determines the output, for feature-cache keys."""
        return {
            "image_size": int(self.image_size),
            "target_pad_ratio": float(self.target_pad_ratio),
            "mean": [float(m) for m in self.mean],
            "std": [float(s) for s in self.std],
            "interpolation": "bicubic",
            "version": _PREPROCESS_VERSION,
        }
