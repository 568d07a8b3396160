"""BLIP-2 backbone: a pretrained checkpoint (hub id or folder) or the tiny random preset.

Either way a :class:`Backbone`: the HF retrieval model with its ViT frozen, the tokenizer,
the matching image preprocessor and a ``key`` naming the weights (part of every
feature-cache key, so cached ViT tokens are never reused across encoders).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tokenizers import normalizers, pre_tokenizers
from transformers import (
    AutoTokenizer,
    BertTokenizer,
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    PreTrainedTokenizerBase,
)

from dqe_cir_pipeline.io_utils import SHORT_HASH_CHARS, short_hash

from .config import config_block
from .lavis_tower import is_clip_folder, load_converted
from .preprocess import ImagePreprocessor

logger = logging.getLogger(__name__)

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_TINY_MARKER = "tiny_spec.json"  # written last-but-atomic into a tiny backbone folder
_TINY_FORMAT = 1


class BackboneNotFoundError(FileNotFoundError):
    """The requested backbone weights are not available (offline and not cached)."""


@config_block
class TinyBackboneSpec:
    """Hyper-parameters of the tiny random BLIP-2 (CPU tests, smoke runs)."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    vision_mlp: int = 256
    qformer_hidden: int = 128
    qformer_layers: int = 2
    qformer_heads: int = 4
    qformer_mlp: int = 256
    cross_attention_frequency: int = 1  # [design] every tiny layer cross-attends (BLIP-2 uses 2)
    num_query_tokens: int = 16
    projection_dim: int = 64
    max_position_embeddings: int = 64  # text positions (pretraining descriptions: ~50 words)
    vocab_size: int = 1000
    init_std: float = 0.02
    seed: int = 0


@config_block
class BackboneConfig:
    """Which backbone to use (``backbone``).

    Attributes:
        source: "pretrained" (a ``save_pretrained`` folder or hub id; default: the tiny
            backbone our ``pretraining`` pipeline made, shipped in ``models/``) or "tiny"
            (the tiny preset with random weights, built in ``tiny_dir``).
    """

    source: str = "pretrained"
    name_or_path: str = "models/tiny-blip2-synthetic"
    revision: str | None = None
    tiny: TinyBackboneSpec = field(default_factory=TinyBackboneSpec)
    tiny_dir: str = "data/06_models/tiny_backbone"
    max_text_len: int = 32

    def __post_init__(self) -> None:
        if self.source not in ("tiny", "pretrained"):
            raise ValueError(f"backbone.source must be 'tiny' or 'pretrained', got {self.source!r}")


@dataclass
class Backbone:
    """A loaded backbone; ``key`` is a short hash of its weights (part of feature-cache keys).

    ``model.vision_model`` is frozen and in eval mode; the tokenizer puts [CLS] first, [PAD] = 0.
    """

    model: Blip2ForImageTextRetrieval
    tokenizer: PreTrainedTokenizerBase
    preprocessor: ImagePreprocessor
    key: str
    name: str
    max_text_len: int = 32


def _key_hash(payload: Any) -> str:
    """Short hash of sorted-key ``json.dumps``, not ``canonical_json``: existing keys stay valid."""
    return short_hash(json.dumps(payload, sort_keys=True, default=str))


def _freeze_vision(model: Blip2ForImageTextRetrieval) -> Blip2ForImageTextRetrieval:
    """Freeze the ViT: no gradients, eval mode (it runs once, into the feature cache)."""
    model.vision_model.requires_grad_(False)
    model.vision_model.eval()
    return model


def _captions_fingerprint(captions: list[str]) -> str:
    return _key_hash(sorted(set(captions)))


def train_wordpiece_tokenizer(
    captions: Iterable[str], vocab_size: int, max_len: int
) -> BertTokenizer:
    """Deterministic lowercase BERT WordPiece tokenizer built offline from ``captions``.

    Vocabulary: [PAD]=0, [UNK], [CLS], [SEP], [MASK], every character and its ``##``
    continuation, then whole words by frequency (ties alphabetical) up to ``vocab_size``.
    [design] ``WordPieceTrainer`` breaks ties in hash order, so its vocabularies vary by run.
    """
    norm = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter()
    for caption in captions:
        if caption and caption.strip():
            counts.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(caption)))
    chars = sorted({ch for w in counts for ch in w})
    tokens = list(SPECIAL_TOKENS) + chars + [f"##{ch}" for ch in chars]
    if len(tokens) > vocab_size:
        raise ValueError(f"vocab_size {vocab_size} < specials + alphabet ({len(tokens)})")
    seen = set(tokens)
    by_freq = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    tokens += [w for w, _ in by_freq if w not in seen][: vocab_size - len(tokens)]
    vocab = {t: i for i, t in enumerate(tokens)}
    # transformers 5.x: `vocab=` (a dict) is honoured, `vocab_file=` is silently ignored.
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=max_len)


def tiny_blip2_config(spec: TinyBackboneSpec) -> Blip2Config:
    """The tiny ``Blip2Config`` (keyword-only constructors in transformers 5.x)."""
    vision = Blip2VisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_mlp,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        initializer_range=spec.init_std,  # default 1e-10 -> near-constant features
    )
    qformer = Blip2QFormerConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.qformer_hidden,
        num_hidden_layers=spec.qformer_layers,
        num_attention_heads=spec.qformer_heads,
        intermediate_size=spec.qformer_mlp,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.init_std,
        encoder_hidden_size=spec.vision_hidden,
        cross_attention_frequency=spec.cross_attention_frequency,
        use_qformer_text_input=True,  # builds the text FFNs the composed-query pass needs
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        num_query_tokens=spec.num_query_tokens,
        image_text_hidden_size=spec.projection_dim,
        initializer_range=spec.init_std,
    )


def _tiny_key(spec: TinyBackboneSpec, tokenizer: PreTrainedTokenizerBase, folder: Path) -> str:
    """Spec + vocabulary + SHA-256 of the saved weights (the seeded init may vary by torch)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    return "tiny-" + _key_hash({"spec": asdict(spec), "vocab": vocab, "weights": weights})


def _read_tiny_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out_dir / _TINY_MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _load_tiny(out_dir: Path, spec: TinyBackboneSpec, max_text_len: int | None = None) -> Backbone:
    model = Blip2ForImageTextRetrieval.from_pretrained(str(out_dir), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(out_dir))
    return Backbone(
        model=_freeze_vision(model),
        tokenizer=tokenizer,
        preprocessor=ImagePreprocessor(spec.image_size),
        key=_tiny_key(spec, tokenizer, out_dir),
        name="tiny",
        max_text_len=_text_len(spec, max_text_len),
    )


def _text_len(spec: TinyBackboneSpec, max_text_len: int | None) -> int:
    """The truncation length: ``max_text_len``, which the tiny model must have positions for."""
    if max_text_len is None:
        return spec.max_position_embeddings
    if max_text_len > spec.max_position_embeddings:
        raise ValueError(
            f"backbone.max_text_len = {max_text_len} exceeds the tiny backbone's "
            f"{spec.max_position_embeddings} text positions (backbone.tiny.max_position_embeddings)"
        )
    return max_text_len


def build_tiny_backbone(
    spec: TinyBackboneSpec,
    captions: Iterable[str],
    out_dir: str | os.PathLike[str],
    max_text_len: int | None = None,
) -> Backbone:
    """Build (or reuse) the tiny random BLIP-2 with a tokenizer trained on ``captions``.

    [design] A folder built from the same spec is reused bit-exact, even for other captions (a
    warning; the key still names the saved vocabulary): give each benchmark its own
    ``tiny_dir`` for a matching vocabulary. Written atomically, returned as loaded back.
    """
    out = Path(out_dir)
    caption_list = [c for c in captions if c and c.strip()]
    fingerprint = _captions_fingerprint(caption_list)
    marker = _read_tiny_marker(out)
    if (
        marker is not None
        and marker.get("spec") == asdict(spec)
        and marker.get("format") == _TINY_FORMAT
    ):
        if marker.get("captions") != fingerprint:
            logger.warning("Reusing tiny backbone in %s built from other captions", out)
        logger.info("Loading tiny backbone from %s", out)
        return _load_tiny(out, spec, max_text_len)
    if marker is not None:
        logger.warning("Tiny backbone in %s has another spec: rebuilding", out)
    elif out.exists() and any(out.iterdir()):  # never delete a folder that is not ours
        raise FileExistsError(f"{out} exists and is not a tiny backbone; choose another tiny_dir")

    tokenizer = train_wordpiece_tokenizer(
        caption_list, spec.vocab_size, spec.max_position_embeddings
    )
    config = tiny_blip2_config(spec)
    # Seeded construction without disturbing the caller's global RNG state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Blip2ForImageTextRetrieval(config)
        gen = torch.Generator().manual_seed(spec.seed)
        with torch.no_grad():  # HF initialises query_tokens to zeros: all tokens identical
            model.query_tokens.copy_(
                torch.randn(model.query_tokens.shape, generator=gen) * spec.init_std
            )

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        meta = {"format": _TINY_FORMAT, "spec": asdict(spec), "captions": fingerprint}
        (tmp / _TINY_MARKER).write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out.exists():  # stale / other spec: move aside, then swap in
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:  # a concurrent builder won the race: use its result
            if _read_tiny_marker(out) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Built tiny backbone in %s", out)
    return _load_tiny(out, spec, max_text_len)


def _folder_fingerprint(folder: Path) -> str:
    """[design] Content fingerprint of a local checkpoint folder: survives copies, cheap for ViT-g.

    config.json, then per weight file its name, size and first and last MiB (safetensors
    headers hold every tensor's offsets).
    """
    h = hashlib.sha256()
    cfg = folder / "config.json"
    if cfg.exists():
        h.update(cfg.read_bytes())
    weights = sorted(
        p
        for p in folder.iterdir()
        if p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")
    )
    for p in weights:
        size = p.stat().st_size
        h.update(f"{p.name}:{size}".encode())
        with p.open("rb") as f:
            h.update(f.read(1 << 20))
            if size > (1 << 20):
                f.seek(max(size - (1 << 20), 1 << 20))
                h.update(f.read())
    return h.hexdigest()[:SHORT_HASH_CHARS]


def _not_found_message(cfg: BackboneConfig, err: Exception) -> str:
    name = cfg.name_or_path
    looks_like_hub_id = name.count("/") == 1 and not Path(name).exists()
    hub_id = name if looks_like_hub_id else "Salesforce/blip2-itm-vit-g"
    folder = f"data/06_models/{hub_id.split('/')[-1]}"
    return (
        f"BLIP-2 backbone {name!r} (revision {cfg.revision or 'default'}) could not be loaded "
        f"({type(err).__name__}: {err}).\n"
        "Download it once on a machine with internet access:\n"
        f"    hf download {hub_id} --local-dir {folder}\n"
        f"then set `backbone.name_or_path: {folder}` in conf/local/parameters.yml "
        "(or use `backbone.source: tiny` for a random CPU-sized backbone)."
    )


def _is_path(name: str) -> bool:
    """A name that can only be a folder (absolute, ``./``, ``../``, ``~`` or nested
    deeper than a hub id's ``owner/name``), never a hub id."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def _load_retrieval(cfg: BackboneConfig, local: Path) -> Blip2ForImageTextRetrieval:
    """The float32 retrieval model: a folder converted from LAVIS's CLIP ViT-L BLIP-2
    (:mod:`.lavis`: its own vision tower) or any transformers BLIP-2 checkpoint."""
    if local.is_dir() and is_clip_folder(local):
        return load_converted(local)
    return Blip2ForImageTextRetrieval.from_pretrained(
        cfg.name_or_path, revision=cfg.revision, dtype=torch.float32
    )


#: Backbones shipped inside the package too (package data), for a packaged run (wheel +
#: conf archive) started outside the project, where ``models/<name>`` does not exist.
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "shipped_models"


def _shipped_copy(cfg: BackboneConfig) -> BackboneConfig:
    """``cfg`` on the package's copy of a shipped backbone when its folder is missing."""
    local = Path(cfg.name_or_path).expanduser()
    shipped = SHIPPED_MODELS / local.name
    if not _is_path(cfg.name_or_path) or local.is_dir() or not shipped.is_dir():
        return cfg
    logger.info("backbone folder %s not found: using the copy in the package, %s", local, shipped)
    return replace(cfg, name_or_path=str(shipped))


def load_backbone(cfg: BackboneConfig, captions: Iterable[str] | None = None) -> Backbone:
    """Load the backbone ``cfg`` describes, its vision encoder frozen and in eval mode.

    ``captions`` train the tiny tokenizer, needed only when ``cfg.tiny_dir`` holds no tiny
    backbone of this spec. BackboneNotFoundError: weights unavailable (offline and not
    cached), or a tiny backbone to build without captions.
    """
    if cfg.source == "tiny":
        out = Path(cfg.tiny_dir)
        if captions is None:
            marker = _read_tiny_marker(out)
            if marker is None or marker.get("spec") != asdict(cfg.tiny):
                raise BackboneNotFoundError(
                    f"No tiny backbone with this spec in {out}; call load_backbone with the "
                    "training captions once to build it."
                )
            return _load_tiny(out, cfg.tiny, cfg.max_text_len)
        return build_tiny_backbone(cfg.tiny, captions, out, cfg.max_text_len)

    cfg = _shipped_copy(cfg)
    local = Path(cfg.name_or_path).expanduser()
    if _is_path(cfg.name_or_path) and not local.is_dir():
        missing = FileNotFoundError(f"backbone folder not found: {local}")
        raise BackboneNotFoundError(
            f"backbone folder not found: {local}\n" + _not_found_message(cfg, missing)
        )
    try:  # the same call for a hub id, a hub cache hit and a local folder
        model = _load_retrieval(cfg, local)
        tokenizer = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision)
    except (OSError, ValueError) as err:
        raise BackboneNotFoundError(_not_found_message(cfg, err)) from err
    if not model.qformer.config.use_qformer_text_input:
        raise ValueError(
            f"{cfg.name_or_path}: the Q-Former has no text path (use_qformer_text_input=False)"
        )
    if local.is_dir():
        key = "local-" + _folder_fingerprint(local)
    else:  # hub: the resolved commit pins the weights when transformers reports it
        commit = getattr(model.config, "_commit_hash", None)
        key = "hub-" + _key_hash([cfg.name_or_path, commit or cfg.revision or "main"])
    image_size = model.config.vision_config.image_size
    if isinstance(image_size, (list, tuple)):
        image_size = int(image_size[0])
    return Backbone(
        model=_freeze_vision(model),
        tokenizer=tokenizer,
        preprocessor=ImagePreprocessor(int(image_size)),
        key=key,
        name=cfg.name_or_path,
        max_text_len=cfg.max_text_len,
    )


def encode_vit(model: Blip2ForImageTextRetrieval, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) pixels -> (B, T, D) post-layernorm ViT tokens: what the feature cache stores.

    Cloned out of inference mode, so they can feed a graph that trains the Q-Former.
    """
    vm = model.vision_model
    p = next(vm.parameters())
    with torch.inference_mode():
        tokens = vm(pixel_values=pixel_values.to(device=p.device, dtype=p.dtype)).last_hidden_state
    return tokens.clone()
