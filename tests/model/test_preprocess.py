"""Preprocessing: target pad, bicubic short-side resize, centre crop, CLIP normalisation."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from dqe_cir_pipeline.model.preprocess import CLIP_MEAN, CLIP_STD, ImagePreprocessor, target_pad

RED = (255, 0, 0)


def _norm(rgb: tuple[int, int, int]) -> torch.Tensor:
    """Expected normalised value of an RGB colour, shape (3,)."""
    x = torch.tensor(rgb, dtype=torch.float32) / 255.0
    return (x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)


def test_target_pad_sizes() -> None:
    assert target_pad(Image.new("RGB", (100, 40)), 1.25).size == (100, 80)
    assert target_pad(Image.new("RGB", (40, 100)), 1.25).size == (80, 100)
    square = Image.new("RGB", (50, 50))
    assert target_pad(square, 1.25) is square
    below = Image.new("RGB", (60, 50))  # ratio 1.2 < 1.25: untouched
    assert target_pad(below, 1.25) is below
    assert target_pad(Image.new("RGB", (125, 100)), 1.25).size == (125, 100)  # already exact


def test_target_pad_is_black_and_centred() -> None:
    padded = target_pad(Image.new("RGB", (100, 40), RED), 1.25)
    assert padded.getpixel((50, 0)) == (0, 0, 0) and padded.getpixel((50, 19)) == (0, 0, 0)
    assert padded.getpixel((50, 20)) == RED and padded.getpixel((50, 59)) == RED
    assert padded.getpixel((50, 60)) == (0, 0, 0) and padded.getpixel((50, 79)) == (0, 0, 0)


def test_solid_square_exact_values() -> None:
    out = ImagePreprocessor(16)(Image.new("RGB", (32, 32), (10, 200, 30)))
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = _norm((10, 200, 30)).view(3, 1, 1).expand(3, 16, 16)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_padded_image_has_black_bands_at_known_rows() -> None:
    # 100x40 red -> padded 100x80 (20 black rows each side) -> resized 25x20 -> crop 20x20.
    # The black bands become 5 rows at top and bottom; bicubic rings stay near the edge.
    out = ImagePreprocessor(20)(Image.new("RGB", (100, 40), RED))
    assert out.shape == (3, 20, 20)
    black, red = _norm((0, 0, 0)), _norm(RED)
    torch.testing.assert_close(out[:, 0, 10], black, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 19, 10], black, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 10, 10], red, atol=1e-6, rtol=0)
    torch.testing.assert_close(out, out.flip(1), atol=1e-6, rtol=0)  # centred padding


def test_mode_conversion_and_batch() -> None:
    pre = ImagePreprocessor(8)
    gray = pre(Image.new("L", (8, 8), 128))
    torch.testing.assert_close(gray[:, 0, 0], _norm((128, 128, 128)), atol=1e-6, rtol=0)
    rgba = pre(Image.new("RGBA", (8, 8), (255, 0, 0, 10)))  # alpha dropped
    torch.testing.assert_close(rgba[:, 0, 0], _norm(RED), atol=1e-6, rtol=0)
    assert pre.batch([Image.new("RGB", (30, 9)), Image.new("RGB", (9, 30))]).shape == (2, 3, 8, 8)


def test_is_deterministic_and_settings() -> None:
    img = Image.effect_noise((37, 23), 64).convert("RGB")
    pre = ImagePreprocessor(16)
    assert torch.equal(pre(img), pre(img))
    s = pre.settings()
    json.dumps(s)  # cache keys must be serialisable
    assert s["image_size"] == 16 and s["target_pad_ratio"] == 1.25
    assert s["mean"] == pytest.approx(list(CLIP_MEAN)) and s["interpolation"] == "bicubic"
    assert ImagePreprocessor(32).settings() != s
