"""Convert LAVIS BLIP-2 checkpoints (``pretrain``: EVA ViT-g + Q-Former, ``pretrain_vitL``:
CLIP ViT-L/14 + Q-Former) once into a folder that ``backbone.name_or_path`` accepts.

The key maps are written from LAVIS's module definitions. Accounting is strict: every
tensor of the input files is used or listed as deliberately unused (with the reason), and
every missing, unexpected or misshapen key is an error that names it. The CLIP tower at
run time: :mod:`.lavis_tower`. Key map, depth history and what was never run:
docs/real_data.md §11. ``python -m dqe_cir_pipeline.model.lavis convert --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    BertTokenizer,
    Blip2ForImageTextRetrieval,
    PreTrainedTokenizerBase,
)

from .lavis_keys import (
    ARCHS,
    REPORT_FILE,
    Arch,
    KeyMap,
    blip2_config,
    clip_vision_map,
    eva_vision_map,
    qformer_layout,
    qformer_map,
    unused_reason,
)
from .lavis_tower import (
    CLIP_TOWER,
    LavisCheckpointError,
    clip_tower,
    load_converted,
    retrieval_model,
)

_FORMAT = 1


# --------------------------------------------------------------------------- reading


@dataclass
class Sources:
    """The tensors of both files under LAVIS's model names (the vision file's keys get the
    ``visual_encoder.`` prefix LAVIS gives them), and where each one came from."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # name -> "role:key in its file"
    superseded: dict[str, str] = field(default_factory=dict)  # "vision:key" -> reason
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # role -> path, size...


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A ``.pth`` state dict (LAVIS training files keep it under ``"model"``) and the
    names of the file's other top-level entries (optimizer state, config...), not used."""
    if not path.is_file():
        raise LavisCheckpointError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise LavisCheckpointError(f"{path}: not a tensor checkpoint ({err})") from err
    others: list[str] = []
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        others = sorted(str(k) for k in obj if k != "model")
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise LavisCheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise LavisCheckpointError(f"{path}: entries that are not tensors: {', '.join(bad)}")
    return obj, others


def _file_info(path: Path, others: list[str]) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "sha256": digest.hexdigest(),
        "other_entries_not_read": others,
    }


def gather(qformer_path: Path, vision_path: Path) -> Sources:
    """Both files as LAVIS builds the model: the vision file first, then the Q-Former file
    loaded over it (non-strictly), so its ``visual_encoder.*`` tensors take precedence."""
    src = Sources()
    vision, v_others = read_checkpoint(vision_path)
    qformer, q_others = read_checkpoint(qformer_path)
    src.files = {
        "qformer": _file_info(qformer_path, q_others),
        "vision": _file_info(vision_path, v_others),
    }
    for key, tensor in vision.items():
        name = "visual_encoder." + key
        if name in qformer:
            src.superseded[f"vision:{key}"] = f"superseded by qformer:{name} (loaded after it)"
        else:
            src.tensors[name], src.origin[name] = tensor, f"vision:{key}"
    for key, tensor in qformer.items():
        src.tensors[key], src.origin[key] = tensor, f"qformer:{key}"
    return src


# --------------------------------------------------------------------------- mapping


@dataclass
class Conversion:
    """What :func:`map_checkpoint` made of the sources, for the report."""

    used: dict[str, list[str]]  # "role:key" -> target keys
    unused: dict[str, str]  # "role:key" -> reason
    blocks: dict[str, list[int]]  # role -> vision block indices taken from that file
    temp: float | None


def _missing(name: str, target: str) -> str:
    if name.startswith("visual_encoder."):
        where = f"neither qformer:{name} nor vision:{name.removeprefix('visual_encoder.')}"
        return f"missing key {name} ({where}; for {target})"
    return f"missing key qformer:{name} (for {target})"


def _account(src: Sources, rules: KeyMap, tower: str, depth: int) -> Conversion:
    """Every source tensor used or deliberately unused; any other problem raises."""
    wanted: dict[str, list[str]] = {}
    for target, rule in rules.items():
        for name in rule.sources:
            wanted.setdefault(name, []).append(target)
    problems = [_missing(n, t[0]) for n, t in wanted.items() if n not in src.tensors]
    used: dict[str, list[str]] = {}
    unused = dict(src.superseded)
    for name, tensor in src.tensors.items():
        if name in wanted:
            used[src.origin[name]] = wanted[name]
            continue
        reason = unused_reason(name, tower, depth, tensor)
        if reason is None:
            problems.append(f"unexpected key {src.origin[name]}")
        else:
            unused[src.origin[name]] = reason
    if problems:
        raise LavisCheckpointError("the LAVIS files do not fit:\n  " + "\n  ".join(problems))
    blocks: dict[str, list[int]] = {}
    first = (
        "transformer.resblocks.{}.ln_1.weight" if tower == CLIP_TOWER else "blocks.{}.norm1.weight"
    )
    for i in range(depth):
        role = src.origin["visual_encoder." + first.format(i)].split(":")[0]
        blocks.setdefault(role, []).append(i)
    temp = src.tensors.get("temp")
    return Conversion(used, unused, blocks, None if temp is None else float(temp))


def map_checkpoint(
    src: Sources, arch: Arch, depth: int, vision_heads: int, qformer_heads: int
) -> tuple[Blip2ForImageTextRetrieval, Conversion]:
    """The retrieval model holding the LAVIS weights (float32), and the accounting."""
    config = blip2_config(src.tensors, arch, depth, vision_heads, qformer_heads)
    layers, cross, _ = qformer_layout(src.tensors)
    vision = clip_vision_map(depth) if arch.tower == CLIP_TOWER else eva_vision_map(depth)
    rules = {**vision, **qformer_map(layers, cross)}
    conversion = _account(src, rules, arch.tower, depth)
    model = retrieval_model(config, initialise=False)
    expected = model.state_dict()
    drift = sorted(set(expected) ^ set(rules))
    if drift:  # the maps are out of step with this transformers version
        raise LavisCheckpointError(f"key map and model disagree on: {', '.join(drift)}")
    state: dict[str, torch.Tensor] = {}
    problems = []
    for target, rule in rules.items():
        value = rule.combine([src.tensors[n] for n in rule.sources])
        if value.shape != expected[target].shape:
            names = " + ".join(src.origin[n] for n in rule.sources)
            problems.append(
                f"shape of {names}: {tuple(value.shape)}, {target} needs "
                f"{tuple(expected[target].shape)}"
            )
        state[target] = value.to(torch.float32, copy=True).contiguous()
    if problems:
        raise LavisCheckpointError("the LAVIS files do not fit:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), conversion


# --------------------------------------------------------------------------- the command

TOKENIZER_HELP = (
    "BLIP-2's Q-Former reads bert-base-uncased's WordPiece vocabulary plus a [DEC] bos "
    "token (LAVIS Blip2Base.init_tokenizer). Nothing is downloaded here: fetch the "
    "tokenizer once on a machine with hub access,\n"
    "    hf download google-bert/bert-base-uncased vocab.txt tokenizer.json "
    "tokenizer_config.json --local-dir DIR\n"
    "and pass --tokenizer DIR ({detail})."
)


def load_tokenizer(folder: str | os.PathLike[str] | None) -> PreTrainedTokenizerBase:
    """bert-base-uncased with ``[DEC]`` as bos token, as LAVIS builds BLIP-2's tokenizer."""
    path = Path(folder) if folder is not None else None
    if path is None or not any((path / f).is_file() for f in ("vocab.txt", "tokenizer.json")):
        detail = "no --tokenizer given" if path is None else f"{path} has no vocab.txt"
        raise LavisCheckpointError(TOKENIZER_HELP.format(detail=detail))
    tokenizer = BertTokenizer.from_pretrained(str(path), truncation_side="right")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def _verify(folder: Path, model: Blip2ForImageTextRetrieval) -> None:
    """Load the written folder back the way the project will and compare every tensor."""
    if clip_tower(model.config) is not None:
        again = load_converted(folder)
    else:
        again = Blip2ForImageTextRetrieval.from_pretrained(str(folder), dtype=torch.float32)
    mine, theirs = model.state_dict(), again.state_dict()
    for key in sorted(set(mine) | set(theirs)):
        if key not in mine or key not in theirs or not torch.equal(mine[key], theirs[key]):
            raise LavisCheckpointError(f"{folder}: {key} does not load back as written")


def convert(
    arch_name: str,
    qformer: str | os.PathLike[str],
    vision: str | os.PathLike[str],
    tokenizer: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    depth: int | None = None,
    vision_heads: int | None = None,
    qformer_heads: int = 12,
) -> dict[str, Any]:
    """Convert a LAVIS checkpoint pair into a folder ``backbone.name_or_path`` accepts.

    Returns:
        The report written as ``lavis_conversion.json`` in ``out``.
    """
    arch = ARCHS[arch_name]
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"{target} exists and is not empty; choose another --out")
    tok = load_tokenizer(tokenizer)
    depth = arch.default_depth if depth is None else depth
    src = gather(Path(qformer), Path(vision))
    model, conv = map_checkpoint(src, arch, depth, vision_heads or arch.vision_heads, qformer_heads)
    rows = model.config.qformer_config.vocab_size
    if len(tok) != rows:
        raise LavisCheckpointError(
            f"the tokenizer has {len(tok)} tokens with [DEC]; "
            f"qformer:Qformer.bert.embeddings.word_embeddings.weight has {rows} rows"
        )
    report = {
        "format": _FORMAT,
        "arch": arch_name,
        "tower": arch.tower,
        "depth": depth,
        "lavis_default_depth": arch.default_depth,
        "vision_blocks_from": conv.blocks,
        "temp": conv.temp,
        "files": src.files,
        "used": conv.used,
        "unused": conv.unused,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    del src
    _write(model, tok, report, target)
    return report


def _write(
    model: Blip2ForImageTextRetrieval,
    tokenizer: PreTrainedTokenizerBase,
    report: dict[str, Any],
    target: Path,
) -> None:
    """Write into a temporary sibling, check it loads back, then rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
        _verify(tmp, model)
        if target.exists():
            target.rmdir()  # empty (checked before converting)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _summary(report: dict[str, Any], out: str) -> str:
    blocks = ", ".join(
        f"{role} file: {b[0]}..{b[-1]}" for role, b in sorted(report["vision_blocks_from"].items())
    )
    return (
        f"converted LAVIS blip2 {report['arch']} ({report['tower']}, depth {report['depth']}; "
        f"vision blocks from the {blocks}) into {out}\n"
        f"{len(report['used'])} tensors used, {len(report['unused'])} deliberately unused "
        f"(each with its reason in {Path(out) / REPORT_FILE})\n"
        f"use it with: backbone.name_or_path: {out}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dqe_cir_pipeline.model.lavis convert ...``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m dqe_cir_pipeline.model.lavis",
        description="Convert LAVIS BLIP-2 checkpoints for backbone.name_or_path.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("convert", help="convert a Q-Former + vision checkpoint pair once")
    cmd.add_argument("--arch", choices=sorted(ARCHS), required=True)
    cmd.add_argument("--qformer", required=True, help="blip2_pretrained[_vitL].pth")
    cmd.add_argument("--vision", required=True, help="eva_vit_g.pth or clip_vit_L.pth")
    cmd.add_argument("--tokenizer", help="a local bert-base-uncased tokenizer folder")
    cmd.add_argument("--out", required=True, help="the folder to create")
    cmd.add_argument(
        "--depth",
        type=int,
        help="vision blocks kept (default: what LAVIS builds today, 39 for pretrain, "
        "23 for pretrain_vitL; the released pretrain_vitL weights hold 21)",
    )
    cmd.add_argument("--vision-heads", type=int, help="default 16 (both towers)")
    cmd.add_argument("--qformer-heads", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        report = convert(
            args.arch,
            args.qformer,
            args.vision,
            args.tokenizer,
            args.out,
            args.depth,
            args.vision_heads,
            args.qformer_heads,
        )
    except (LavisCheckpointError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(_summary(report, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
