"""The seed's pixel space and colour transfer (sizes are core.sizes, decoding files core.decode)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from core.decode import Size, image_size
from core.sizes import style_size, working_size
from core.vgg import CAFFE_MEAN

__all__ = ["from_seed_space", "resize", "style_size", "to_seed_space", "transfer_luminance", "working_size"]


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
    """Add the mean back, clip to 0..255, round to 8 bits, resize to `size`.

    In numpy, not torch: snapshots are rendered on a writer thread beside the optimisation, and a
    torch operation there starts a second OpenMP team whose spinning slowed a 2-core CPU's loop
    by a fifth (bench/snapshots.py). numpy computes the same float32 sums and rounds the same way.
    """
    pixels = x.detach()
    if pixels.device.type != "cpu" or pixels.dtype != torch.float32:
        pixels = pixels.to("cpu", torch.float32)
    array = pixels[0].permute(1, 2, 0).numpy()
    rgb = np.clip(array + np.asarray(CAFFE_MEAN, dtype=np.float32), 0, 255).round().astype(np.uint8)
    return resize(Image.fromarray(np.ascontiguousarray(rgb), mode="RGB"), size)


def transfer_luminance(result: Image.Image, content: Image.Image) -> Image.Image:
    """The result's luminance with the content's chroma (neural-style's -original_colors)."""
    luma = result.convert("YCbCr").getchannel("Y")
    _, cb, cr = resize(content, image_size(result)).convert("YCbCr").split()
    return Image.merge("YCbCr", (luma, cb, cr)).convert("RGB")
