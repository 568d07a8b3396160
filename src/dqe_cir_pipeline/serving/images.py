"""Reading query and gallery images from a path, raw bytes or base64 text, with clear errors."""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dqe_cir_pipeline.serving.errors import ServingInputError

#: File suffixes a gallery folder is scanned for (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


@dataclass(frozen=True)
class LoadedImage:
    """A decoded RGB image, where it came from and the SHA-256 of its bytes."""

    image: Image.Image
    source: str
    content_hash: str


def decode_bytes(data: bytes, source: str) -> LoadedImage:
    """Decode image bytes; ``source`` names them in errors (a path or ``row 3 image_b64``).

    Raises:
        ServingInputError: empty bytes, not an image format PIL reads, or an image PIL
            refuses as a decompression bomb (more pixels than ``Image.MAX_IMAGE_PIXELS``
            allows; also when its warning is turned into an error).
    """
    if not data:
        raise ServingInputError(f"{source}: the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ServingInputError(f"{source}: refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        # PIL's own message names the in-memory buffer, which tells the user nothing
        raise ServingInputError(
            f"{source}: not a readable image (not an image format PIL recognises)"
        ) from None
    except (OSError, ValueError) as err:
        raise ServingInputError(f"{source}: not a readable image ({err})") from None
    return LoadedImage(rgb, source, hashlib.sha256(data).hexdigest())


def from_pil(image: Image.Image, source: str) -> LoadedImage:
    """An in-memory PIL image (a notebook's); its hash is over the decoded RGB pixels."""
    rgb = image.convert("RGB")
    return LoadedImage(rgb, source, hashlib.sha256(rgb.tobytes()).hexdigest())


def load_image_file(path: str | Path, source: str | None = None) -> LoadedImage:
    """Read and decode an image file.

    Raises:
        ServingInputError: the file is missing, unreadable or not an image.
    """
    where = source or str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ServingInputError(f"{where}: no such image file {str(path)!r}") from None
    except OSError as err:
        raise ServingInputError(f"{where}: cannot read {str(path)!r} ({err})") from None
    return decode_bytes(data, where if source is None else f"{where} ({path})")


def load_image_b64(text: str, source: str) -> LoadedImage:
    """Decode a base64-encoded image (what REST clients send).

    Raises:
        ServingInputError: the text is not base64 or the bytes are not an image.
    """
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ServingInputError(f"{source}: not valid base64 ({err})") from None
    return decode_bytes(data, source)


def encode_image_b64(path: str | Path) -> str:
    """The base64 text of an image file's bytes (to build a REST request)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def file_hash(path: str | Path) -> str:
    """SHA-256 hex of a file's bytes (the images table's ``content_hash``)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def scan_folder(folder: str | Path) -> list[Path]:
    """Every image file below ``folder``, sorted.

    Raises:
        ServingInputError: the folder does not exist or holds no image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ServingInputError(f"gallery folder {str(root)!r} does not exist")
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise ServingInputError(
            f"gallery folder {str(root)!r} holds no image ({', '.join(IMAGE_SUFFIXES)})"
        )
    return found
