"""Decoding uploaded or local files into RGB images. Pillow and numpy only: the API uses it too."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidImageError

Size = tuple[int, int]  # (height, width), as the spec and the seed write sizes

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode a file or bytes into an RGB image; InvalidImageError if it is not an image."""
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(handle) as img:
            return to_rgb(img)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        name = "image bytes" if isinstance(source, bytes) else str(source)
        raise InvalidImageError(f"{name}: not an image Pillow can decode ({exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode Pillow reads (grey, palette, RGBA, CMYK, 16-bit) -> upright RGB, first frame."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        # convert("RGB") clips 16-bit values at 255 (a white image); scale to 8 bits instead.
        values = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if values.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels show white, as a browser on a white page shows them.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def image_size(img: Image.Image) -> Size:
    return img.height, img.width
