"""The seed's loop (core/reference.py), the yardstick of bench/speed.py and `nst doctor`, on the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from core import StyleParams
from core.images import to_seed_space
from core.reference import SeedObjective, run_reference, seed_loop_ms_per_iteration
from core.transfer import initial_image

SAMPLES = Path(__file__).resolve().parents[2] / "examples" / "images"
CPU = torch.device("cpu")


def seed_tensors(params: StyleParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The sample pair in seed space at the working size, as bench/speed.py builds it."""
    size = (params.height, params.width)
    with Image.open(SAMPLES / "coffee.png") as c, Image.open(SAMPLES / "starry_night.jpg") as s:
        return to_seed_space(c.convert("RGB"), size), to_seed_space(s.convert("RGB"), size)


def test_the_loop_lowers_the_loss() -> None:
    params = StyleParams(iterations=6, height=32, width=32, seed=0)
    content, style = seed_tensors(params)
    objective = SeedObjective(params, content, style, CPU)
    x0 = initial_image(params, content, style, 0)
    best, seconds = run_reference(objective, x0, params)
    with torch.no_grad():
        start, end = objective(x0).item(), objective(best).item()
    assert seconds > 0
    assert end < 0.99 * start, (start, end)


def test_ms_per_iteration_is_a_finite_positive_figure() -> None:
    params = StyleParams(height=32, width=32, seed=0)
    content, style = seed_tensors(params)
    ms = seed_loop_ms_per_iteration(content, style, params, CPU, iterations=3)
    assert math.isfinite(ms) and ms > 0


def test_one_iteration_is_refused() -> None:
    # The first iteration is never timed: with one there would be nothing to measure.
    params = StyleParams(height=32, width=32, seed=0)
    content, style = seed_tensors(params)
    with pytest.raises(ValueError, match="at least 2"):
        seed_loop_ms_per_iteration(content, style, params, CPU, iterations=1)
