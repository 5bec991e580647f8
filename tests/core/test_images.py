"""Input images of every mode Pillow reads become upright RGB; sizes; colour preservation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.decode import open_image
from core.errors import InvalidImageError
from core.images import style_size, transfer_luminance, working_size
from core.params import StyleParams
from tests.conftest import gradient_image


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I", "F"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    img = gradient_image(20, 10).convert(mode)
    fmt = {"CMYK": "JPEG", "F": "TIFF", "I": "TIFF"}.get(mode, "PNG")
    out = open_image(encode(img, fmt))
    assert out.mode == "RGB" and out.size == (20, 10)


def test_sixteen_bit_png_keeps_its_tones() -> None:
    values = (np.linspace(0, 65535, 64).reshape(8, 8)).astype(np.uint16)
    out = open_image(encode(Image.fromarray(values), "PNG"))
    grey = np.asarray(out)[:, :, 0]
    assert grey.min() == 0 and grey.max() == 255 and 100 < grey.mean() < 155  # not clipped to white


def test_exif_orientation_is_applied() -> None:
    img = gradient_image(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = open_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 30)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, _, b = open_image(data).getpixel((4, 4))
    assert r > 200 and b < 50


@pytest.mark.parametrize(
    "data", [b"", b"hello, not an image", b"%PDF-1.4\n", encode(gradient_image(16, 16), "PNG")[:60]]
)
def test_non_images_raise_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        open_image(data)


def test_working_size_stretches_or_keeps_aspect() -> None:
    assert working_size((400, 600), StyleParams()) == (384, 512)
    assert working_size((400, 600), StyleParams(keep_aspect=True)) == (341, 512)
    assert working_size((1000, 10), StyleParams(keep_aspect=True, height=64, width=64)) == (64, 16)


def test_style_size_follows_style_scale() -> None:
    assert style_size((640, 1024), (384, 512), StyleParams()) == (384, 512)
    assert style_size((640, 1024), (384, 512), StyleParams(style_scale=0.5)) == (192, 256)
    assert style_size((640, 1024), (384, 512), StyleParams(keep_aspect=True)) == (320, 512)


def test_transfer_luminance_keeps_the_content_chroma() -> None:
    # Moderate colours and a mid-grey luminance, so no channel clips when they are combined.
    content = Image.blend(gradient_image(32, 32, seed=3), Image.new("RGB", (32, 32), (128, 128, 128)), 0.5)
    result = Image.new("RGB", (32, 32), (150, 120, 110))
    mixed = transfer_luminance(result, content)
    _, cb_mixed, cr_mixed = (np.asarray(c, dtype=int) for c in mixed.convert("YCbCr").split())
    _, cb_content, cr_content = (np.asarray(c, dtype=int) for c in content.convert("YCbCr").split())
    y_mixed = np.asarray(mixed.convert("YCbCr").getchannel("Y"), dtype=int)
    assert np.abs(cb_mixed - cb_content).max() <= 3 and np.abs(cr_mixed - cr_content).max() <= 3
    assert np.abs(y_mixed - np.asarray(result.convert("YCbCr").getchannel("Y"), dtype=int)).max() <= 3
