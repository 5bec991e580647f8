"""Shared fixtures: tiny images, explicit random weights, the bundled samples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "images"


@pytest.fixture(autouse=True)
def random_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests ask for random weights explicitly; nothing falls back to them by itself."""
    monkeypatch.setenv("NST_VGG_WEIGHTS", "random")


@pytest.fixture
def client(service: Any) -> Iterator[httpx.Client]:
    """HTTP to the `service` fixture of the requesting module (a tests.services.Service)."""
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with some noise: enough structure for VGG features."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    r = 255 * xs / max(width - 1, 1)
    g = 255 * ys / max(height - 1, 1)
    b = 128 + 100 * np.sin(xs / 3.0 + seed) * np.cos(ys / 4.0)
    pixels = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def content_image() -> Image.Image:
    return gradient_image(48, 40, seed=1)


@pytest.fixture
def style_image() -> Image.Image:
    return gradient_image(40, 40, seed=2).rotate(45)
