"""Decoding uploaded or local files into RGB images. Pillow and numpy only: the API uses it too."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidImageError

Size = tuple[int, int]  # (height, width), as the spec and the seed write sizes

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
# EXIF orientations that turn the picture a quarter: its upright width is its stored height.
_QUARTER_TURNS = {5, 6, 7, 8}
_ORIENTATION_TAG = 0x0112
_ROWS_AT_ONCE = 256  # 16-bit to 8-bit conversion a band at a time, never the whole image in wider types
# What Pillow's readers raise on files that are not images, or are broken or crafted ones (its
# plugins do arithmetic and indexing on header fields: a 1-pixel JPEG's draft divided by zero).
DECODE_ERRORS = (
    UnidentifiedImageError, Image.DecompressionBombError, OSError, EOFError, SyntaxError, ValueError,
    ArithmeticError, IndexError, KeyError, TypeError, struct.error,
)  # fmt: skip


def open_image(source: str | Path | bytes) -> Image.Image:
    """Decode a file or bytes into an RGB image; InvalidImageError if it is not an image."""
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(handle) as img:
            return to_rgb(img)
    except DECODE_ERRORS as exc:
        name = "image bytes" if isinstance(source, bytes) else str(source)
        raise InvalidImageError(f"{name}: not an image Pillow can decode ({exc})") from exc


JPEG_CHECK_SCALE = 8  # check_decodes reads a JPEG's every byte but keeps an eighth of each side


def check_decodes(data: bytes | IO[bytes]) -> Size:
    """Decode the file's first frame without keeping or converting it, as a check that the
    worker can; returns its upright (width, height) (EXIF orientation applied). A JPEG is decoded
    at 1/8 scale: every byte of it is still read and checked, in a sixty-fourth of the memory.
    InvalidImageError if it does not decode. `data` may be an open file (read from its start),
    so that an upload spooled to disk is never all in memory."""
    if not isinstance(data, bytes):
        data.seek(0)
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            width, height = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, width // JPEG_CHECK_SCALE), max(1, height // JPEG_CHECK_SCALE)))
            img.load()
            orientation = img.getexif().get(_ORIENTATION_TAG)
    except DECODE_ERRORS as exc:
        raise InvalidImageError(f"image bytes: not an image Pillow can decode ({exc})") from exc
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def decoded_pixels(width: int, height: int, image_format: str | None, progressive: bool = False) -> int:
    """How many pixels' worth of memory (4 bytes each) check_decodes holds at once for an image of
    this size and format. A progressive JPEG keeps every coefficient of the whole picture while it
    decodes (2 bytes for each of 3 components a pixel), whatever the scale it outputs."""
    if image_format == "JPEG" and progressive:
        return width * height * 3 // 2
    if image_format == "JPEG":
        return -(-width // JPEG_CHECK_SCALE) * -(-height // JPEG_CHECK_SCALE)
    return width * height


def sixteen_to_eight_bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) grey image as 8-bit grey, scaled (convert("L") would clip at
    255: a white image). A band of rows at a time, so a 40-Mpx image never exists in a wider type
    than its own: 2 bytes a pixel in, 1 out, not the 8 of a float64 copy."""
    values = np.asarray(img)  # its own type: uint16, or int32 for mode I
    peak = 65535 if values.max(initial=0) > 255 else 255
    out = np.empty(values.shape, dtype=np.uint8)
    for start in range(0, values.shape[0], _ROWS_AT_ONCE):
        band = np.clip(values[start : start + _ROWS_AT_ONCE].astype(np.int64), 0, peak)
        out[start : start + _ROWS_AT_ONCE] = (band * 255 + peak // 2) // peak
    del values
    return Image.fromarray(out, mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any mode Pillow reads (grey, palette, RGBA, CMYK, 16-bit) -> upright RGB, first frame."""
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img)
    if img.mode in _SIXTEEN_BIT_MODES:
        img = sixteen_to_eight_bit(img)
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
