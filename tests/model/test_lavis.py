"""LAVIS BLIP-2 conversion at toy size: LAVIS-named random tensors written as .pth files,
converted, loaded through ``load_backbone`` and checked against hand-written LAVIS-style
forwards of the same tensors; strict key accounting and its errors."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import BertTokenizer, Blip2ForImageTextRetrieval

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dqe_cir_pipeline.model.backbone import (  # noqa: E402
    Backbone,
    BackboneConfig,
    encode_vit,
    load_backbone,
)
from dqe_cir_pipeline.model.dqe import DQECIR  # noqa: E402
from dqe_cir_pipeline.model.extract import VitEncoder  # noqa: E402
from dqe_cir_pipeline.model.lavis import REPORT_FILE, convert, main  # noqa: E402
from dqe_cir_pipeline.model.lavis_tower import (  # noqa: E402
    LavisCheckpointError,
    LavisClipVision,
)
from dqe_cir_pipeline.model.pretrain import Stage1  # noqa: E402
from dqe_cir_pipeline.serving.query_model import QueryModel  # noqa: E402

W, HEADS, PATCH, GRID, MLP = 32, 4, 8, 4, 64  # vision: 32 px images, 17 tokens
H, QHEADS, QMLP, QUERIES, EMBED, MAXPOS = 24, 4, 48, 4, 16, 16  # Q-Former
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "shirt", "dress"]
VOCAB = len(WORDS) + 1  # + [DEC]


class _Rand:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, scale: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return mean + scale * torch.randn(*shape, generator=self.gen)


def _ln(r: _Rand, sd: dict[str, torch.Tensor], name: str, width: int) -> None:
    sd[name + ".weight"] = r(width, scale=0.1, mean=1.0)
    sd[name + ".bias"] = r(width, scale=0.1)


def _linear(r: _Rand, sd: dict[str, torch.Tensor], name: str, out: int, inp: int) -> None:
    sd[name + ".weight"] = r(out, inp, scale=1 / math.sqrt(inp))
    sd[name + ".bias"] = r(out, scale=0.05)


def clip_file(seed: int = 0, blocks: int = 2) -> dict[str, torch.Tensor]:
    """LAVIS clip_vit.VisionTransformer names, plus CLIP's ln_post / proj (not used)."""
    r, sd = _Rand(seed), {}
    sd["conv1.weight"] = r(W, 3, PATCH, PATCH, scale=0.05)
    sd["class_embedding"] = r(W, scale=0.5)
    sd["positional_embedding"] = r(GRID * GRID + 1, W, scale=0.5)
    _ln(r, sd, "ln_pre", W)
    for i in range(blocks):
        b = f"transformer.resblocks.{i}."
        sd[b + "attn.in_proj_weight"] = r(3 * W, W, scale=1 / math.sqrt(W))
        sd[b + "attn.in_proj_bias"] = r(3 * W, scale=0.05)
        _linear(r, sd, b + "attn.out_proj", W, W)
        _ln(r, sd, b + "ln_1", W)
        _ln(r, sd, b + "ln_2", W)
        _linear(r, sd, b + "mlp.c_fc", MLP, W)
        _linear(r, sd, b + "mlp.c_proj", W, MLP)
    _ln(r, sd, "ln_post", W)
    sd["proj"] = r(W, 8)
    return sd


def eva_file(seed: int = 0, blocks: int = 2) -> dict[str, torch.Tensor]:
    """LAVIS eva_vit.VisionTransformer names (qkv without bias, q_bias / v_bias)."""
    r, sd = _Rand(seed), {}
    sd["cls_token"] = r(1, 1, W, scale=0.5)
    sd["pos_embed"] = r(1, GRID * GRID + 1, W, scale=0.5)
    sd["patch_embed.proj.weight"] = r(W, 3, PATCH, PATCH, scale=0.05)
    sd["patch_embed.proj.bias"] = r(W, scale=0.05)
    for i in range(blocks):
        b = f"blocks.{i}."
        _ln(r, sd, b + "norm1", W)
        _ln(r, sd, b + "norm2", W)
        sd[b + "attn.qkv.weight"] = r(3 * W, W, scale=1 / math.sqrt(W))
        sd[b + "attn.q_bias"] = r(W, scale=0.05)
        sd[b + "attn.v_bias"] = r(W, scale=0.05)
        _linear(r, sd, b + "attn.proj", W, W)
        _linear(r, sd, b + "mlp.fc1", MLP, W)
        _linear(r, sd, b + "mlp.fc2", W, MLP)
    return sd


def qformer_file(seed: int = 1, vision_width: int = W) -> dict[str, torch.Tensor]:
    """LAVIS Blip2Qformer names: 2 layers, cross-attention on layer 0 (every 2nd)."""
    r, sd = _Rand(seed), {"query_tokens": _Rand(seed + 7)(1, QUERIES, H)}
    e = "Qformer.bert.embeddings."
    sd[e + "word_embeddings.weight"] = r(VOCAB, H)
    sd[e + "position_embeddings.weight"] = r(MAXPOS, H)
    sd[e + "position_ids"] = torch.arange(MAXPOS).expand(1, -1).clone()
    _ln(r, sd, e + "LayerNorm", H)
    for i in range(2):
        b = f"Qformer.bert.encoder.layer.{i}."
        for part, kv in (("attention", H), ("crossattention", vision_width))[: 2 - i]:
            _linear(r, sd, f"{b}{part}.self.query", H, H)
            _linear(r, sd, f"{b}{part}.self.key", H, kv)
            _linear(r, sd, f"{b}{part}.self.value", H, kv)
            _linear(r, sd, f"{b}{part}.output.dense", H, H)
            _ln(r, sd, f"{b}{part}.output.LayerNorm", H)
        for ffn in ("", "_query"):
            _linear(r, sd, f"{b}intermediate{ffn}.dense", QMLP, H)
            _linear(r, sd, f"{b}output{ffn}.dense", H, QMLP)
            _ln(r, sd, f"{b}output{ffn}.LayerNorm", H)
    c = "Qformer.cls.predictions."
    _linear(r, sd, c + "transform.dense", H, H)
    _ln(r, sd, c + "transform.LayerNorm", H)
    sd[c + "bias"] = r(VOCAB)
    sd[c + "decoder.weight"], sd[c + "decoder.bias"] = r(VOCAB, H), sd[c + "bias"].clone()
    _linear(r, sd, "vision_proj", EMBED, H)
    _linear(r, sd, "text_proj", EMBED, H)
    _linear(r, sd, "itm_head", 2, H)
    _ln(r, sd, "ln_vision", vision_width)
    sd["temp"] = torch.tensor(0.07)
    return sd


# --------------------------------------------------------------------------- references


def clip_reference(sd: dict[str, torch.Tensor], pixels: torch.Tensor, depth: int) -> torch.Tensor:
    """LAVIS clip_vit forward (torch's MultiheadAttention, LND layout), then ln_vision."""
    x = F.conv2d(pixels, sd["conv1.weight"], stride=PATCH).flatten(2).transpose(1, 2)
    x = torch.cat([sd["class_embedding"].expand(x.shape[0], 1, W), x], dim=1)
    x = x + sd["positional_embedding"]
    x = F.layer_norm(x, (W,), sd["ln_pre.weight"], sd["ln_pre.bias"], 1e-5).transpose(0, 1)
    for i in range(depth):
        p = f"transformer.resblocks.{i}."
        attn = torch.nn.MultiheadAttention(W, HEADS)
        attn.load_state_dict(
            {k[len(p + "attn.") :]: v for k, v in sd.items() if k.startswith(p + "attn.")}
        )
        h = F.layer_norm(x, (W,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], 1e-5)
        x = x + attn(h, h, h, need_weights=False)[0]
        h = F.layer_norm(x, (W,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], 1e-5)
        h = F.linear(h, sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + F.linear(h, sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"])
    return x.transpose(0, 1)


def eva_reference(sd: dict[str, torch.Tensor], pixels: torch.Tensor, depth: int) -> torch.Tensor:
    """LAVIS eva_vit forward_features (qkv bias = q_bias, 0, v_bias; exact GELU)."""
    x = F.conv2d(pixels, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=PATCH)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + sd["pos_embed"]
    b, n, d = x.shape
    for i in range(depth):
        p = f"blocks.{i}."
        h = F.layer_norm(x, (W,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros(W), sd[p + "attn.v_bias"]])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], bias).reshape(b, n, 3, HEADS, d // HEADS)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = ((q * (d // HEADS) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        h = (a @ v).transpose(1, 2).reshape(b, n, d)
        x = x + F.linear(h, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        h = F.layer_norm(x, (W,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x


def ln_vision(q: dict[str, torch.Tensor], x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), q["ln_vision.weight"], q["ln_vision.bias"], eps)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for bert-base-uncased (LAVIS adds [DEC] to it)."""
    folder = tmp_path_factory.mktemp("bert")
    vocab = {w: i for i, w in enumerate(WORDS)}
    BertTokenizer(vocab=vocab, do_lower_case=True).save_pretrained(str(folder))
    return folder


def _convert(
    tmp: Path,
    arch: str,
    vision: dict[str, torch.Tensor],
    qformer: dict[str, torch.Tensor],
    tokenizer: Path | None,
    **kw: Any,
) -> tuple[Path, dict[str, Any]]:
    """Write the pair as LAVIS ships it (Q-Former file under "model"), convert into tmp/out."""
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save({"model": qformer, "epoch": 3}, tmp / "qformer.pth")
    torch.save(vision, tmp / "vision.pth")
    out = tmp / "out"
    kw = {"vision_heads": HEADS, "qformer_heads": QHEADS, **kw}
    report = convert(arch, tmp / "qformer.pth", tmp / "vision.pth", tokenizer, out, **kw)
    return out, report


def _pixels(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, GRID * PATCH, GRID * PATCH, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("clip")
    v, q = clip_file(), qformer_file()
    out, report = _convert(tmp, "pretrain_vitL", v, q, tokenizer_dir, depth=2)
    bb = load_backbone(BackboneConfig(source="pretrained", name_or_path=str(out)))
    return {"out": out, "report": report, "bb": bb, "vision": v, "qformer": q}


# --------------------------------------------------------------------------- CLIP ViT-L


def test_clip_pair_loads_through_load_backbone_and_matches_lavis(clip_run: dict[str, Any]) -> None:
    bb: Backbone = clip_run["bb"]
    vision = bb.model.vision_model
    assert isinstance(vision, LavisClipVision)
    assert not vision.training and not any(p.requires_grad for p in vision.parameters())
    config = bb.model.config
    assert config.lavis_vision == {"tower": "clip_vit", "depth": 2}
    assert config.vision_config.hidden_size == config.qformer_config.encoder_hidden_size == W
    assert config.vision_config.num_hidden_layers == 2
    assert bb.preprocessor.image_size == GRID * PATCH and bb.key.startswith("local-")
    assert bb.tokenizer.bos_token == "[DEC]" and len(bb.tokenizer) == VOCAB
    pixels = _pixels()
    want = ln_vision(clip_run["qformer"], clip_reference(clip_run["vision"], pixels, 2), 1e-5)
    got = encode_vit(bb.model, pixels)
    assert got.shape == (2, GRID * GRID + 1, W)
    assert torch.allclose(got, want, atol=1e-6, rtol=0), (got - want).abs().max()
    ids = bb.tokenizer(["a red shirt", "a blue dress"], return_tensors="pt", padding=True)
    with torch.no_grad():  # transformers' own retrieval forward runs on the tower too
        itm = bb.model(pixel_values=pixels, **ids, use_image_text_matching_head=True)
    assert itm.logits_per_image.shape == (2, 2)


def test_every_tensor_of_both_files_is_accounted_for(clip_run: dict[str, Any]) -> None:
    report = clip_run["report"]
    keys = {f"qformer:{k}" for k in clip_run["qformer"]} | {
        f"vision:{k}" for k in clip_run["vision"]
    }
    used, unused = set(report["used"]), set(report["unused"])
    assert used | unused == keys and not used & unused
    assert unused == {
        "vision:ln_post.weight",
        "vision:ln_post.bias",
        "vision:proj",
        "qformer:temp",
        "qformer:Qformer.bert.embeddings.position_ids",
        *(k for k in keys if k.startswith("qformer:Qformer.cls.")),
    }
    assert all(report["unused"].values())  # every one with its reason
    assert report["temp"] == pytest.approx(0.07)
    assert report["files"]["qformer"]["other_entries_not_read"] == ["epoch"]
    assert report["vision_blocks_from"] == {"vision": [0, 1]}
    assert json.loads((clip_run["out"] / REPORT_FILE).read_text()) == report


def _transformers_name(key: str) -> str:
    """transformers' BLIP-2 conversion renames, restated independently for the check."""
    if key.startswith("Qformer.bert.embeddings.LayerNorm"):
        return key.replace("Qformer.bert.embeddings.LayerNorm", "qformer.layernorm")
    if key.startswith("Qformer.bert.embeddings."):
        return key.replace("Qformer.bert.", "")
    key = key.replace("Qformer.bert.", "qformer.").replace(
        "attention.self.", "attention.attention."
    )
    head, _, rest = key.partition(".")
    head = {"vision_proj": "vision_projection", "text_proj": "text_projection"}.get(head, head)
    return f"{head}.{rest}" if rest else head


def test_qformer_tensors_land_where_transformers_expects_them(clip_run: dict[str, Any]) -> None:
    state = clip_run["bb"].model.state_dict()
    checked = 0
    for key, tensor in clip_run["qformer"].items():
        if f"qformer:{key}" in clip_run["report"]["used"] and key.split(".")[0] != "ln_vision":
            assert torch.equal(state[_transformers_name(key)], tensor), key
            checked += 1
    used = [k for k in clip_run["report"]["used"] if k.startswith("qformer:")]
    assert checked == len(used) - 2 > 60  # all but ln_vision.weight / .bias
    ln = state["vision_model.ln_vision.weight"]
    assert torch.equal(ln, clip_run["qformer"]["ln_vision.weight"])
    positions = clip_run["bb"].model.embeddings.position_ids
    assert torch.equal(positions.flatten(), torch.arange(MAXPOS))


def test_depth_is_a_setting_and_the_blocks_beyond_it_are_listed(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    v, q = clip_file(blocks=3), qformer_file()
    out, report = _convert(tmp_path, "pretrain_vitL", v, q, tokenizer_dir, depth=1)
    assert report["depth"] == 1 and report["lavis_default_depth"] == 23
    assert "depth" in report["unused"]["vision:transformer.resblocks.2.ln_1.weight"]
    assert "depth" in report["unused"]["vision:transformer.resblocks.1.attn.in_proj_weight"]
    assert json.loads((out / "config.json").read_text())["lavis_vision"]["depth"] == 1
    bb = load_backbone(BackboneConfig(name_or_path=str(out)))
    pixels = _pixels()
    want = ln_vision(q, clip_reference(v, pixels, 1), 1e-5)
    assert torch.allclose(encode_vit(bb.model, pixels), want, atol=1e-6, rtol=0)
    with pytest.raises(LavisCheckpointError, match=r"visual_encoder\.transformer\.resblocks\.3\."):
        _convert(tmp_path / "again", "pretrain_vitL", v, q, tokenizer_dir)  # default: 23


def test_vision_tensors_in_the_qformer_file_take_precedence(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    v, q = clip_file(seed=0), qformer_file()
    other = clip_file(seed=5, blocks=1)
    for key, tensor in other.items():  # block 0 and ln_pre, as a pretrain_vitL file holds them
        if key.startswith(("transformer.resblocks.0.", "ln_pre.")):
            q["visual_encoder." + key] = tensor
    out, report = _convert(tmp_path, "pretrain_vitL", v, q, tokenizer_dir, depth=2)
    assert report["vision_blocks_from"] == {"qformer": [0], "vision": [1]}
    assert "superseded" in report["unused"]["vision:transformer.resblocks.0.ln_1.weight"]
    assert "superseded" in report["unused"]["vision:ln_pre.bias"]
    merged = {**v, **{k.removeprefix("visual_encoder."): t for k, t in q.items()}}
    bb = load_backbone(BackboneConfig(name_or_path=str(out)))
    pixels = _pixels()
    want = ln_vision(q, clip_reference(merged, pixels, 2), 1e-5)
    assert torch.allclose(encode_vit(bb.model, pixels), want, atol=1e-6, rtol=0)
    assert not torch.allclose(want, ln_vision(q, clip_reference(v, pixels, 2), 1e-5))


# --------------------------------------------------------------------------- EVA ViT-g


def test_eva_pair_is_a_plain_transformers_folder_matching_lavis(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    v, q = eva_file(blocks=3), qformer_file()
    out, report = _convert(tmp_path, "pretrain", v, q, tokenizer_dir, depth=2)
    assert "lavis_vision" not in json.loads((out / "config.json").read_text())
    assert "depth" in report["unused"]["vision:blocks.2.norm1.weight"]
    bb = load_backbone(BackboneConfig(name_or_path=str(out)))
    assert type(bb.model.vision_model).__name__ == "Blip2VisionModel"
    qkv_bias = bb.model.vision_model.encoder.layers[0].self_attn.qkv.bias
    assert torch.equal(qkv_bias[W : 2 * W], torch.zeros(W))  # EVA has no key bias
    pixels = _pixels()
    # transformers' post_layernorm (= ln_vision) shares the blocks' eps 1e-6; LAVIS uses 1e-5
    want = ln_vision(q, eva_reference(v, pixels, 2), 1e-6)
    assert torch.allclose(encode_vit(bb.model, pixels), want, atol=1e-6, rtol=0)
    plain = Blip2ForImageTextRetrieval.from_pretrained(str(out), dtype=torch.float32)
    assert all(torch.equal(t, plain.state_dict()[k]) for k, t in bb.model.state_dict().items())


# --------------------------------------------------------------------------- errors


def _drop(sd: dict[str, torch.Tensor], key: str) -> None:
    del sd[key]


def _set(sd: dict[str, torch.Tensor], key: str, shape: tuple[int, ...]) -> None:
    sd[key] = torch.zeros(shape)


@pytest.mark.parametrize(
    ("file", "change", "named"),
    [
        (
            "qformer",
            lambda sd: _drop(sd, "Qformer.bert.encoder.layer.1.output.dense.weight"),
            "missing key qformer:Qformer.bert.encoder.layer.1.output.dense.weight",
        ),
        (
            "vision",
            lambda sd: _drop(sd, "transformer.resblocks.1.ln_2.bias"),
            "missing key visual_encoder.transformer.resblocks.1.ln_2.bias",
        ),
        (
            "vision",
            lambda sd: _set(sd, "transformer.resblocks.0.attn.extra", (W,)),
            "unexpected key vision:transformer.resblocks.0.attn.extra",
        ),
        (
            "qformer",
            lambda sd: _set(sd, "Qformer.bert.pooler.dense.weight", (H, H)),
            "unexpected key qformer:Qformer.bert.pooler.dense.weight",
        ),
        (
            "qformer",
            lambda sd: _set(sd, "ln_vision.weight", (W + 1,)),
            "shape of qformer:ln_vision.weight",
        ),
        (
            "vision",
            lambda sd: _set(sd, "transformer.resblocks.1.mlp.c_proj.weight", (W, W)),
            "shape of vision:transformer.resblocks.1.mlp.c_proj.weight",
        ),
        (
            "qformer",
            lambda sd: _set(sd, "Qformer.bert.embeddings.position_ids", (1, MAXPOS)),
            "Qformer.bert.embeddings.position_ids is not arange",
        ),
    ],
)
def test_each_misfit_is_an_error_naming_its_key(
    tmp_path: Path, tokenizer_dir: Path, file: str, change: Any, named: str
) -> None:
    files = {"vision": clip_file(), "qformer": qformer_file()}
    change(files[file])
    with pytest.raises(LavisCheckpointError) as err:
        _convert(
            tmp_path, "pretrain_vitL", files["vision"], files["qformer"], tokenizer_dir, depth=2
        )
    assert named in str(err.value)
    assert not (tmp_path / "out").exists()


def test_the_command_says_what_is_missing_and_what_to_set(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save({"model": qformer_file()}, tmp_path / "q.pth")
    torch.save(clip_file(), tmp_path / "v.pth")
    args = ["convert", "--arch", "pretrain_vitL", "--qformer", str(tmp_path / "q.pth")]
    args += ["--vision", str(tmp_path / "v.pth"), "--out", str(tmp_path / "m"), "--depth", "2"]
    args += ["--vision-heads", str(HEADS), "--qformer-heads", str(QHEADS)]
    assert main(args) == 2
    said = capsys.readouterr().err
    assert "bert-base-uncased" in said and "--tokenizer" in said and "[DEC]" in said
    assert main([*args, "--tokenizer", str(tmp_path)]) == 2  # a folder without a vocabulary
    assert main([*args, "--tokenizer", str(tokenizer_dir)]) == 0
    said = capsys.readouterr().out
    assert f"backbone.name_or_path: {tmp_path / 'm'}" in said
    with pytest.raises(FileExistsError):  # never over an existing folder
        convert(
            "pretrain_vitL",
            tmp_path / "q.pth",
            tmp_path / "v.pth",
            tokenizer_dir,
            tmp_path / "m",
            depth=2,
            vision_heads=HEADS,
            qformer_heads=QHEADS,
        )
    small = tmp_path / "small"
    BertTokenizer(vocab={w: i for i, w in enumerate(WORDS[:-1])}).save_pretrained(str(small))
    with pytest.raises(LavisCheckpointError, match="word_embeddings.weight has 11 rows"):
        convert(
            "pretrain_vitL",
            tmp_path / "q.pth",
            tmp_path / "v.pth",
            small,
            tmp_path / "m2",
            depth=2,
            vision_heads=HEADS,
            qformer_heads=QHEADS,
        )


# --------------------------------------------------------------------------- the pipeline


def test_extraction_training_and_serving_run_on_the_clip_tower(
    clip_run: dict[str, Any], tmp_path: Path
) -> None:
    bb: Backbone = clip_run["bb"]
    images = [Image.new("RGB", (40, 30), c) for c in ("red", "navy", "white")]
    paths = []
    for i, img in enumerate(images):
        img.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    tokens = VitEncoder(bb, torch.device("cpu"), batch_size=2)(paths)
    direct = encode_vit(bb.model, bb.preprocessor.batch(images)).to(torch.float16).numpy()
    assert tokens.shape == (3, GRID * GRID + 1, W) and (tokens == direct).all()
    stage1 = Stage1(bb.model)
    assert stage1.image_embeds(torch.from_numpy(tokens).float()).shape == (3, QUERIES, EMBED)
    assert not any(p.requires_grad for p in bb.model.vision_model.parameters())
    dqe = DQECIR(bb.model)
    assert dqe.encode_targets(torch.from_numpy(tokens).float()).shape == (3, QUERIES, EMBED)
    served = QueryModel(bb.model, dqe, bb.tokenizer, bb.preprocessor, bb.key, bb.name, 8)
    export = served.save_pretrained(tmp_path / "export")
    again = QueryModel.from_pretrained(export)
    assert isinstance(again._retrieval.vision_model, LavisClipVision)
    assert (again.vit_tokens(images) == served.vit_tokens(images)).all()
    assert torch.equal(
        again.encode_queries(images[:1], ["a red shirt"]),
        served.encode_queries(images[:1], ["a red shirt"]),
    )
