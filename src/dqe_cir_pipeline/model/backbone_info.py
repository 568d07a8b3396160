"""What a backbone is, read from its configuration alone (no weights loaded).

The record a run keeps of its backbone (the ``backbone_info`` dataset, MLflow params
``backbone.arch`` / ``backbone.vision_depth``) and the ViT token grid the feature cache
stores per image (the pre-flight check's size estimate). A folder converted from LAVIS
(:mod:`.lavis`) carries ``lavis_conversion.json``; its arch and the depth it was converted
at come from there (docs/real_data.md §11).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import Blip2Config, Blip2VisionConfig

from .lavis_keys import REPORT_FILE
from .lavis_tower import CLIP_TOWER, clip_tower

#: ``arch`` of the tiny preset (``backbone.source: tiny``).
TINY_ARCH = "tiny"
#: ``arch`` of any other transformers BLIP-2 folder or hub id (e.g. blip2-itm-vit-g).
TRANSFORMERS_ARCH = "transformers"
#: The vision tower of a transformers ``Blip2VisionModel`` (EVA-style ViT).
BLIP2_TOWER = "blip2_vision"


def token_grid(vision: Blip2VisionConfig) -> tuple[int, int]:
    """(tokens, width) of the ViT output the feature cache stores: patches + [CLS]."""
    size = vision.image_size
    image_size = int(size[0] if isinstance(size, (list, tuple)) else size)
    return (image_size // int(vision.patch_size)) ** 2 + 1, int(vision.hidden_size)


def conversion_report(folder: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The LAVIS conversion report of a converted folder; ``None`` for any other backbone.

    Raises:
        ValueError: The report exists but is not a JSON object (the message names it).
    """
    if folder is None:
        return None
    path = Path(folder).expanduser() / REPORT_FILE
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable LAVIS conversion report ({err})") from err
    if not isinstance(report, dict) or "arch" not in report:
        raise ValueError(f"{path}: not a LAVIS conversion report (no 'arch')")
    return report


def describe_architecture(
    config: Blip2Config, source: str, folder: str | os.PathLike[str] | None
) -> dict[str, Any]:
    """Arch, vision tower, ViT depth and token grid of a backbone, from its config.

    Args:
        config: The loaded model's (or a folder's) ``Blip2Config``.
        source: ``backbone.source`` (``tiny`` or ``pretrained``).
        folder: The local folder it was loaded from (``None``: hub id or tiny preset).

    Returns:
        ``arch`` (the LAVIS model type of a converted folder, ``tiny`` or
        ``transformers``), ``vision_tower``, ``vision_depth`` (ViT blocks run),
        ``vision_tokens``, ``vision_width`` and, for a converted folder,
        ``lavis_default_depth`` and the SHA-256 of the LAVIS files it came from.

    Raises:
        ValueError: A converted folder whose report and config disagree on the depth.
    """
    report = conversion_report(folder) if source != TINY_ARCH else None
    tokens, width = token_grid(config.vision_config)
    depth = int(config.vision_config.num_hidden_layers)
    tower = CLIP_TOWER if clip_tower(config) is not None else BLIP2_TOWER
    info: dict[str, Any] = {
        "arch": TINY_ARCH if source == TINY_ARCH else TRANSFORMERS_ARCH,
        "vision_tower": tower,
        "vision_depth": depth,
        "vision_tokens": tokens,
        "vision_width": width,
    }
    if report is None:
        return info
    if int(report.get("depth", depth)) != depth:
        raise ValueError(
            f"{folder}: {REPORT_FILE} says depth {report['depth']}, config.json has "
            f"{depth} vision layers: the folder was altered after conversion"
        )
    files = report.get("files") or {}
    info.update(
        arch=str(report["arch"]),
        vision_tower=str(report.get("tower", tower)),
        lavis_default_depth=report.get("lavis_default_depth"),
        lavis_sha256={role: f.get("sha256") for role, f in sorted(files.items())},
    )
    return info


def configured_architecture(
    source: str, name_or_path: str, revision: str | None = None
) -> dict[str, Any] | None:
    """:func:`describe_architecture` of a pretrained backbone from its ``config.json``
    (local folder, or hub id in the local cache), without loading weights; ``None`` when
    the configuration cannot be read."""
    try:
        config = Blip2Config.from_pretrained(name_or_path, revision=revision)
    except (OSError, ValueError):
        return None
    local = Path(name_or_path).expanduser()
    return describe_architecture(config, source, local if local.is_dir() else None)
