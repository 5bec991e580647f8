"""Images in and out: decoding odd files, working sizes, the seed's pixel space, colour transfer."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import InvalidImageError
from core.params import MIN_SIDE, StyleParams
from core.vgg import CAFFE_MEAN

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


def working_size(content: Size, params: StyleParams) -> Size:
    """(height, width) of the optimisation: the requested box, or the content fitted inside it."""
    if not params.keep_aspect:
        return params.height, params.width
    return _fit(content, (params.height, params.width))


def style_size(style: Size, working: Size, params: StyleParams) -> Size:
    """Style images are stretched to the working size (the seed), scaled by style_scale; with
    keep_aspect they keep their own aspect ratio inside that box."""
    box = (max(MIN_SIDE, round(working[0] * params.style_scale)), max(MIN_SIDE, round(working[1] * params.style_scale)))
    return _fit(style, box) if params.keep_aspect else box


def _fit(size: Size, box: Size) -> Size:
    scale = min(box[0] / size[0], box[1] / size[1])
    return max(MIN_SIDE, round(size[0] * scale)), max(MIN_SIDE, round(size[1] * scale))


def image_size(img: Image.Image) -> Size:
    return img.height, img.width


def resize(img: Image.Image, size: Size) -> Image.Image:
    if image_size(img) == size:
        return img
    return img.resize((size[1], size[0]), Image.Resampling.BICUBIC)


def to_seed_space(img: Image.Image, size: Size) -> torch.Tensor:
    """A (1, 3, H, W) float tensor of pixel values 0..255 minus the channel mean.

    Converted plainly (value = pixel): not the seed's per-image rescale to 0..255.
    """
    array = np.asarray(resize(img, size), dtype=np.float32)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)
    return tensor - torch.tensor(CAFFE_MEAN).view(1, 3, 1, 1)


def from_seed_space(x: torch.Tensor, size: Size) -> Image.Image:
    """Add the mean back, clip to 0..255, round to 8 bits, resize to `size`."""
    mean = torch.tensor(CAFFE_MEAN, device=x.device).view(1, 3, 1, 1)
    pixels = (x.detach().float() + mean).clamp(0, 255).round().to(torch.uint8)
    array = pixels[0].permute(1, 2, 0).contiguous().cpu().numpy()
    return resize(Image.fromarray(array, mode="RGB"), size)


def transfer_luminance(result: Image.Image, content: Image.Image) -> Image.Image:
    """The result's luminance with the content's chroma (neural-style's -original_colors)."""
    luma = result.convert("YCbCr").getchannel("Y")
    _, cb, cr = resize(content, image_size(result)).convert("YCbCr").split()
    return Image.merge("YCbCr", (luma, cb, cr)).convert("RGB")
