"""Backbone builder: tiny preset (tokenizer, init traps, save/load) and the pretrained path."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from transformers import AutoTokenizer

from dqe_cir_pipeline.model.backbone import (
    Backbone,
    BackboneConfig,
    BackboneNotFoundError,
    TinyBackboneSpec,
    build_tiny_backbone,
    encode_vit,
    load_backbone,
    train_wordpiece_tokenizer,
)

os.environ["HF_HUB_OFFLINE"] = "1"

CAPTIONS = [
    "Make it red and sleeveless",
    "is blue with long sleeves",
    "turn the circle into a square",
    "a darker green triangle",
    "",
    "change the colour to yellow, more fitted",
]


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bb") / "tiny"


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> Backbone:
    return build_tiny_backbone(TinyBackboneSpec(), CAPTIONS, tiny_dir)


def test_tiny_init_traps_are_handled(tiny: Backbone) -> None:
    cfg = tiny.model.config
    assert cfg.vision_config.initializer_range == 0.02
    assert cfg.qformer_config.use_qformer_text_input
    qt = tiny.model.query_tokens[0]  # (Q, H)
    assert qt.shape == (16, 128)
    assert torch.cdist(qt, qt)[~torch.eye(16, dtype=torch.bool)].min() > 0.1  # all distinct
    assert 0.015 < qt.std().item() < 0.025
    assert tiny.model.vision_model.embeddings.patch_embedding.weight.std() > 0.01


def test_vision_frozen(tiny: Backbone) -> None:
    vm = tiny.model.vision_model
    assert not vm.training
    assert not any(p.requires_grad for p in vm.parameters())
    assert all(p.requires_grad for p in tiny.model.qformer.parameters())


def test_tokenizer_round_trip(tiny: Backbone, tmp_path: Path) -> None:
    tok = tiny.tokenizer
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id] == [0, 1, 2, 3]
    ids = tok("Make it RED and sleeveless")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == "make it red and sleeveless"
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = ["a darker green triangle", "unseen wordz"]
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert len(tok) <= TinyBackboneSpec().vocab_size


def test_vocabulary_is_deterministic() -> None:
    a = train_wordpiece_tokenizer(CAPTIONS * 3, 200, 32)
    b = train_wordpiece_tokenizer(list(reversed(CAPTIONS * 3)), 200, 32)
    assert a.get_vocab() == b.get_vocab()


def test_tokenizer_pads_with_zero_and_truncates(tiny: Backbone) -> None:
    enc = tiny.tokenizer(
        ["red", "a " * 100],
        padding="longest",
        truncation=True,
        max_length=tiny.max_text_len,
        return_tensors="pt",
    )
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == mask.shape == (2, tiny.max_text_len)
    assert mask[0].sum() == 3 and (ids[0, 3:] == 0).all()


def test_build_is_idempotent_and_bit_exact(tiny: Backbone, tiny_dir: Path, tmp_path: Path) -> None:
    weights = tiny_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    again = build_tiny_backbone(TinyBackboneSpec(), ["other captions"], tiny_dir)
    assert weights.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert again.key == tiny.key and _state_equal(again.model, tiny.model)
    fresh = build_tiny_backbone(TinyBackboneSpec(), CAPTIONS, tmp_path / "fresh")
    assert fresh.key == tiny.key and _state_equal(fresh.model, tiny.model)
    assert not list(tmp_path.glob(".fresh.tmp-*"))  # temp dir cleaned up


def test_spec_change_rebuilds(tmp_path: Path) -> None:
    a = build_tiny_backbone(
        TinyBackboneSpec(vision_layers=1, qformer_layers=1), CAPTIONS, tmp_path / "t"
    )
    b = build_tiny_backbone(
        TinyBackboneSpec(vision_layers=1, qformer_layers=1, seed=1), CAPTIONS, tmp_path / "t"
    )
    assert a.key != b.key
    assert not torch.equal(a.model.query_tokens, b.model.query_tokens)


def test_foreign_folder_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        build_tiny_backbone(TinyBackboneSpec(), CAPTIONS, tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"


def test_load_backbone_tiny(tiny: Backbone, tiny_dir: Path, tmp_path: Path) -> None:
    cfg = BackboneConfig(source="tiny", tiny_dir=str(tiny_dir))
    loaded = load_backbone(cfg)  # no captions: the existing folder is enough
    assert loaded.key == tiny.key and _state_equal(loaded.model, tiny.model)
    with pytest.raises(BackboneNotFoundError):
        load_backbone(BackboneConfig(source="tiny", tiny_dir=str(tmp_path / "none")))


def test_pretrained_path_on_local_folder(tiny: Backbone, tiny_dir: Path, tmp_path: Path) -> None:
    cfg = BackboneConfig(source="pretrained", name_or_path=str(tiny_dir))
    bb = load_backbone(cfg)
    assert bb.preprocessor.image_size == 64 and bb.key.startswith("local-")
    assert _state_equal(bb.model, tiny.model)
    assert not any(p.requires_grad for p in bb.model.vision_model.parameters())
    assert not bb.model.vision_model.training
    assert bb.tokenizer("make it red")["input_ids"] == tiny.tokenizer("make it red")["input_ids"]
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)  # the key follows content, not the path
    assert load_backbone(BackboneConfig(source="pretrained", name_or_path=str(copy))).key == bb.key


def test_missing_pretrained_raises_helpful_error() -> None:
    cfg = BackboneConfig(source="pretrained", name_or_path="nobody-xyz/no-such-blip2")
    t0 = time.perf_counter()
    with pytest.raises(BackboneNotFoundError) as err:
        load_backbone(cfg)
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "hf download nobody-xyz/no-such-blip2 --local-dir" in msg
    assert "backbone.name_or_path" in msg and "conf/local/parameters.yml" in msg


def test_config_from_a_parameters_dict() -> None:
    cfg = BackboneConfig(**{"source": "tiny", "tiny": {"image_size": 32}, "max_text_len": 16})
    assert cfg.tiny.image_size == 32 and cfg.tiny.patch_size == 8 and cfg.max_text_len == 16
    with pytest.raises(ValueError, match="sauce"):
        BackboneConfig(**{"sauce": "tiny"})
    with pytest.raises(ValueError, match="huge"):
        BackboneConfig(source="huge")


def _shape_image(colour: tuple[int, int, int], shape: str) -> Image.Image:
    im = Image.new("RGB", (64, 64), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    (draw.ellipse if shape == "circle" else draw.rectangle)((12, 12, 52, 52), fill=colour)
    return im


def test_encode_vit_features_are_informative(tiny: Backbone) -> None:
    images = [
        _shape_image((220, 30, 30), "circle"),
        _shape_image((220, 30, 30), "square"),
        _shape_image((30, 30, 220), "circle"),
    ]
    tokens = encode_vit(tiny.model, tiny.preprocessor.batch(images))
    assert tokens.shape == (3, 1 + (64 // 8) ** 2, 128)
    assert not tokens.is_inference() and not tokens.requires_grad
    assert tokens.std(dim=1).mean() > 0.3  # tokens within an image differ
    g = F.normalize(tokens.mean(1), dim=-1)
    same_colour, other_colour = (g[0] @ g[1]).item(), (g[0] @ g[2]).item()
    assert other_colour < 0.9 and other_colour < same_colour < 0.999


def test_backbone_key_hash_is_pinned() -> None:
    # Backbone keys name feature caches and checkpoints: their hashing must not change.
    from dqe_cir_pipeline.model.backbone import _key_hash

    assert _key_hash(["Salesforce/blip2-itm-vit-g", "main"]) == "b1b3c1c684189e33"
    assert _key_hash({"b": "ü", "a": [1, 2]}) == _key_hash({"a": [1, 2], "b": "ü"})


def test_a_missing_backbone_folder_says_folder_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "blip2-itm-vit-g"
    with pytest.raises(
        BackboneNotFoundError, match=r"backbone folder not found: .*blip2-itm-vit-g"
    ):
        load_backbone(BackboneConfig(source="pretrained", name_or_path=str(missing)))
