"""Image preprocessing shared by training, caching and evaluation.

The published CIR methods (CLIP4Cir, SPRC, QuRe) all use the same deterministic transform, so the
frozen ViT tokens can be cached once per image:

1. convert to RGB;
2. "target pad": if the aspect ratio ``max(w, h) / min(w, h)`` is at least ``ratio``,
   pad the short side with black, centred, so that the ratio becomes ``ratio``;
3. bicubic resize of the short side to ``S``;
4. centre crop ``S x S``;
5. scale to [0, 1] and normalise with the CLIP mean / std.

No augmentation: the same image must always give the same tensor (cache exactness).
Implemented with PIL + numpy only (no torchvision dependency); the arithmetic follows
torchvision's ``Resize(int)`` / ``CenterCrop`` on PIL images.
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

    Images whose aspect ratio is below ``ratio`` are returned unchanged. Each side of
    the short dimension gets ``int((long / ratio - short) / 2)`` pixels, those methods'
    rounding, so the ratio is exact whenever ``long / ratio - short`` is an even integer
    and within two pixels of it otherwise.

    Args:
        img: RGB image of size (w, h).
        ratio: target aspect ratio (>= 1).

    Returns:
        The (possibly) padded image.
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
    """PIL image -> normalised (3, S, S) float32 tensor, identical for train and eval.

    Attributes:
        image_size: output side ``S`` (the backbone's ``vision_config.image_size``).
        target_pad_ratio: aspect ratio from which the short side is padded.
        mean: per-channel normalisation mean (CLIP).
        std: per-channel normalisation std (CLIP).
    """

    image_size: int
    target_pad_ratio: float = 1.25
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Preprocess one image.

        Args:
            img: any PIL image (mode converted to RGB).

        Returns:
            Tensor of shape (3, S, S), float32, normalised.
        """
        s = self.image_size
        img = target_pad(img.convert("RGB"), self.target_pad_ratio)
        w, h = img.size
        # Resize the short side to S, long side int(S * long / short) (torchvision rule).
        if w <= h:
            new_w, new_h = s, int(s * h / w)
        else:
            new_w, new_h = int(s * w / h), s
        if (new_w, new_h) != (w, h):
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        # Centre crop with torchvision's rounding of the offsets.
        top = int(round((new_h - s) / 2.0))
        left = int(round((new_w - s) / 2.0))
        img = img.crop((left, top, left + s, top + s))
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return ((x - mean) / std).contiguous()

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """Preprocess a list of images.

        Args:
            images: B PIL images.

        Returns:
            Tensor of shape (B, 3, S, S).
        """
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
