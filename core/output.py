"""Writing images with the facts that made them (weights, seed, parameters) inside the file."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image, PngImagePlugin

METADATA_PREFIX = "nst:"


def encode_image(image: Image.Image, image_format: str, metadata: dict[str, str], quality: int = 90) -> bytes:
    """PNG gets one tEXt chunk per entry (`nst:weights`, ...); JPEG gets a JSON comment."""
    buffer = io.BytesIO()
    image_format = image_format.upper()
    if image_format == "PNG":
        info = PngImagePlugin.PngInfo()
        for key, value in metadata.items():
            info.add_text(METADATA_PREFIX + key, value)
        image.save(buffer, "PNG", pnginfo=info)
    elif image_format in ("JPEG", "JPG"):
        comment = json.dumps({METADATA_PREFIX + k: v for k, v in metadata.items()})
        image.save(buffer, "JPEG", quality=quality, comment=comment.encode())
    else:
        image.save(buffer, image_format)
    return buffer.getvalue()


def save_image(image: Image.Image, path: Path, metadata: dict[str, str]) -> None:
    """Save by the file's extension (PNG when it has none Pillow knows)."""
    extension = path.suffix.lower()
    image_format = Image.registered_extensions().get(extension, "PNG")
    path.write_bytes(encode_image(image, image_format, metadata))


def read_metadata(image: Image.Image) -> dict[str, str]:
    """The `nst:` entries of an image written by `encode_image` (PNG or JPEG)."""
    if "comment" in image.info:
        try:
            entries = json.loads(image.info["comment"])
        except ValueError:
            entries = {}
    else:
        entries = getattr(image, "text", {}) or {}
    return {k.removeprefix(METADATA_PREFIX): v for k, v in entries.items() if k.startswith(METADATA_PREFIX)}
