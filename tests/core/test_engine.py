"""The engine's options on the CPU: bf16 autocast, channels_last, compilation and its fallback.
(The CUDA defaults are the same code with other options; bench/gpu_check.sh runs them there.)"""

from __future__ import annotations

import logging

import pytest
import torch
from PIL import Image

from core import StyleParams, stylize
from core.engine import EngineOptions
from core.losses import gram
from core.objective import LossFunction, compute_targets
from core.vgg import vgg_extractor
from core.weights import WeightsSource

SMALL = {"height": 32, "width": 32}


def fp32_loss_of(image: Image.Image, content: Image.Image, style: Image.Image, params: StyleParams) -> float:
    """Score an image with the plain fp32 objective, as bench/speed.py does."""
    from core.images import to_seed_space

    size = (params.height, params.width)
    extractor = vgg_extractor([*params.content_layers, *params.style_layers], source=WeightsSource("random"))
    targets = compute_targets(extractor, params, to_seed_space(content, size), [to_seed_space(style, size)], [1.0])
    with torch.no_grad():
        return LossFunction(extractor, params)(to_seed_space(image, size), *targets)[0].item()


def test_defaults_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NST_PRECISION", "NST_COMPILE", "NST_CHANNELS_LAST"):
        monkeypatch.delenv(name, raising=False)
    assert EngineOptions.for_device(torch.device("cpu")) == EngineOptions("fp32", True, False)
    assert EngineOptions.for_device(torch.device("cuda")) == EngineOptions("bf16", True, True)
    monkeypatch.setenv("NST_PRECISION", "fp32")
    monkeypatch.setenv("NST_COMPILE", "0")
    assert EngineOptions.for_device(torch.device("cuda")) == EngineOptions("fp32", True, False)
    monkeypatch.setenv("NST_PRECISION", "fp16")
    with pytest.raises(ValueError, match="NST_PRECISION"):
        EngineOptions.for_device(torch.device("cpu"))


def test_gram_is_the_same_for_both_memory_layouts() -> None:
    f = torch.randn(1, 8, 5, 7)
    assert torch.allclose(gram(f.contiguous(memory_format=torch.channels_last)), gram(f), atol=1e-5)


@pytest.mark.slow  # bf16 on the CPU
def test_bf16_autocast_keeps_the_final_loss_within_3_percent(
    monkeypatch: pytest.MonkeyPatch, content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=20, seed=3, **SMALL)
    monkeypatch.setenv("NST_PRECISION", "fp32")
    exact = stylize(content_image, [style_image], params)
    monkeypatch.setenv("NST_PRECISION", "bf16")
    fast = stylize(content_image, [style_image], params)
    want = fp32_loss_of(exact.image, content_image, style_image, params)
    got = fp32_loss_of(fast.image, content_image, style_image, params)
    assert abs(got - want) / want < 0.03, (got, want)


def test_channels_last_gives_the_same_picture(
    monkeypatch: pytest.MonkeyPatch, content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=15, seed=4, **SMALL)
    monkeypatch.setenv("NST_CHANNELS_LAST", "0")
    plain = stylize(content_image, [style_image], params)
    monkeypatch.setenv("NST_CHANNELS_LAST", "1")
    last = stylize(content_image, [style_image], params)
    assert plain.losses is not None and last.losses is not None
    assert last.losses.total == pytest.approx(plain.losses.total, rel=1e-3)


def test_a_failing_compilation_falls_back_to_eager_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, content_image: Image.Image,
    style_image: Image.Image,
) -> None:  # fmt: skip
    params = StyleParams(iterations=5, seed=5, style_weight=1234.0, **SMALL)  # a key no other test compiled
    monkeypatch.setenv("NST_COMPILE", "0")
    eager = stylize(content_image, [style_image], params)

    def broken_compile(fn: object, **kwargs: object) -> object:
        def fail(*args: object) -> None:
            raise RuntimeError("no backend for this graph (test)")

        return fail

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("NST_COMPILE", "1")
    with caplog.at_level(logging.WARNING, logger="core.engine"):
        fallback = stylize(content_image, [style_image], params)
    assert "running eagerly" in caplog.text
    assert eager.losses == fallback.losses


@pytest.mark.slow  # torch.compile
def test_compiled_loss_matches_eager_and_is_compiled_once_for_later_jobs(
    monkeypatch: pytest.MonkeyPatch, content_image: Image.Image, style_image: Image.Image
) -> None:
    """torch.compile for real (inductor on the CPU), on a one-convolution network to keep it short."""
    from torch._dynamo.utils import counters

    params = StyleParams(
        iterations=4, height=16, width=16, seed=0, content_layers=["conv1_1"], style_layers=["conv1_1"],
        style_layer_weights=[1.0], tv_weight=0.5,
    )  # fmt: skip
    monkeypatch.setenv("NST_COMPILE", "0")
    eager = stylize(content_image, [style_image], params)
    monkeypatch.setenv("NST_COMPILE", "1")
    counters.clear()
    first = stylize(content_image, [style_image], params)
    graphs = counters["stats"]["unique_graphs"]
    later = stylize(content_image, [style_image].copy(), params.model_copy(update={"seed": 7}))  # another job
    assert graphs >= 1 and counters["stats"]["unique_graphs"] == graphs, "a later job recompiled"
    assert first.losses is not None and eager.losses is not None and later.losses is not None
    assert first.losses.total == pytest.approx(eager.losses.total, rel=1e-5)
