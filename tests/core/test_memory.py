"""The memory model against measured peaks, checkpointing that changes nothing but memory, and
the budget a worker starts with."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from PIL import Image

from core import StyleParams, stylize
from core.memory import (
    BUDGET_SHARE,
    available_cpu_bytes,
    count_bytes,
    default_budget,
    estimate_bytes,
    plan,
    too_big_detail,
)

ROOT = Path(__file__).resolve().parents[2]


def bench_memory() -> ModuleType:
    """bench/memory.py, whose measurement the test shares (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("bench_memory", ROOT / "bench" / "memory.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_memory"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to reset the RSS peak")
@pytest.mark.parametrize(("side", "checkpointing"), [(128, False), (256, False), (256, True)])
@pytest.mark.slow  # a process of its own, and a job at 256 px
def test_the_estimate_is_within_25_percent_of_the_measured_peak(side: int, checkpointing: bool) -> None:
    # A fresh process each: the rise of its resident set's high-water mark over one job.
    measured = bench_memory().measure((side, side), checkpointing, "cpu")
    estimate = estimate_bytes((side, side), StyleParams(), checkpointing=checkpointing, original=(side, side))
    assert abs(estimate - measured) <= 0.25 * measured, (estimate, measured)


def test_checkpointed_and_plain_runs_give_the_same_loss_and_image(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=12, height=48, width=48, seed=5)
    plain = stylize(content_image, [style_image], params)
    lean = stylize(content_image, [style_image], params, checkpointing=True)
    assert plain.losses is not None and lean.losses is not None
    for name in ("total", "content", "style"):
        a, b = getattr(plain.losses, name), getattr(lean.losses, name)
        assert abs(a - b) <= 1e-5 * abs(a), (name, a, b)
    assert plain.best_iteration == lean.best_iteration
    assert plain.image.tobytes() == lean.image.tobytes()
    assert lean.checkpointing and not plain.checkpointing


def test_checkpointing_keeps_fewer_bytes_and_the_count_grows_with_the_pixels() -> None:
    params = StyleParams()
    small, big = count_bytes((256, 256), params, "fp32", False), count_bytes((512, 512), params, "fp32", False)
    assert 3.8 < big.total / small.total < 4.2  # about linear in the pixels
    for precision in ("fp32", "bf16"):
        plain = estimate_bytes((1024, 1024), params, precision=precision)
        lean = estimate_bytes((1024, 1024), params, precision=precision, checkpointing=True)
        assert lean < 0.8 * plain, (precision, lean, plain)
    assert estimate_bytes((1024, 1024), params, precision="bf16") < estimate_bytes((1024, 1024), params)
    # Fewer layers, less memory: a job that stops at conv3_1 never runs block 4 or 5.
    shallow = StyleParams(content_layers=["conv2_2"], style_layers=["conv1_1", "conv3_1"], style_layer_weights=[1, 1])
    assert estimate_bytes((512, 512), shallow) < estimate_bytes((512, 512), params)


def test_the_plan_checkpoints_only_when_a_plain_run_does_not_fit() -> None:
    params = StyleParams()
    size = (1024, 1024)
    plain = estimate_bytes(size, params)
    lean = estimate_bytes(size, params, checkpointing=True)
    assert plan(size, params, plain).checkpointing is False
    decision = plan(size, params, plain - 1)
    assert decision.checkpointing and decision.bytes == lean
    assert plan(size, params, lean - 1).bytes > lean - 1  # the caller sees it does not fit
    detail = too_big_detail(size, lean, 10**9, "the largest memory budget among the live workers")
    assert "1024x1024" in detail and "1 GB" in detail and "checkpointing" in detail


def test_the_cpu_budget_is_a_share_of_the_memory_available() -> None:
    available = available_cpu_bytes()
    assert available > 0
    budget = default_budget("cpu")
    assert 0 < budget <= available
    assert budget == pytest.approx(BUDGET_SHARE * available, rel=0.2)  # the free memory moves a little


def test_the_memory_model_needs_no_torch() -> None:
    import subprocess

    code = "import sys, core.memory, core.scales, core.sizes, api.admission; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_checkpointing_recomputes_only_under_autograd(content_image: Image.Image) -> None:
    from core.vgg import vgg_extractor

    extractor = vgg_extractor(["conv1_1", "conv3_1", "conv4_2"], checkpointing=True)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        plain = extractor(x)
    tracked = extractor(x.clone().requires_grad_(True))
    for a, b in zip(plain, tracked, strict=True):
        torch.testing.assert_close(a, b.detach())
    # Each stretch ends where a map must be kept anyway: a tap or a pool.
    assert [end for _, end in extractor.segments] == [0, 4, 9, 10, 18, 21]
