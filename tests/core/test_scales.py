"""Coarse-to-fine: the schedules, the parameter's checks, and a run across stages."""

from __future__ import annotations

import itertools

import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from core import Progress, StyleParams, stylize
from core.checkpoint import Checkpoint
from core.cli import main as cli_main
from core.scales import auto_iterations, auto_sizes, plan_stages
from core.transfer import resize_adam_state

TWO = {"scales": [{"size": 32, "iterations": 15}, {"size": 64, "iterations": 15}], "height": 64, "width": 64}
# The issue's schedule: 30 steps at 32 px leave a picture whose loss at 64 px is far below noise's.
ISSUE = {"scales": [{"size": 32, "iterations": 30}, {"size": 64, "iterations": 30}], "height": 64, "width": 64}


def test_auto_follows_crowsonkb_from_128_px_up_by_sqrt_2() -> None:
    assert auto_sizes(512) == [128, 181, 256, 362, 512]
    assert auto_sizes(100) == [100]
    counts = auto_iterations(2500, 5)
    assert sum(counts) == 2500 and abs(counts[0] - 2 * counts[1]) <= 1 and min(counts) >= 1
    stages = plan_stages(StyleParams(scales="auto"), (384, 512))
    assert [s.size for s in stages] == [(96, 128), (136, 181), (192, 256), (272, 362), (384, 512)]
    assert stages[0].first == 1 and stages[-1].last == 2500
    assert all(b.first == a.last + 1 for a, b in itertools.pairwise(stages))
    few = plan_stages(StyleParams(scales="auto", iterations=2, height=1024, width=1024), (1024, 1024))
    assert [(s.size, s.iterations) for s in few] == [((724, 724), 1), ((1024, 1024), 1)]


def test_a_list_of_scales_sets_the_iterations_and_is_checked() -> None:
    params = StyleParams(**TWO)
    assert params.iterations == 30
    assert StyleParams.model_validate(params.model_dump()) == params  # a stored job reads back the same
    bad = [
        ({"scales": [{"size": 64, "iterations": 5}, {"size": 32, "iterations": 5}], "height": 64, "width": 64},
         "increase"),
        ({"scales": [{"size": 32, "iterations": 5}], "height": 64, "width": 64}, "long side, 64 px"),
        ({**TWO, "iterations": 10}, "add up to 30"),
        ({"scales": "fine"}, "auto"),
        ({"scales": [{"size": 64}], "height": 64, "width": 64}, "Field required"),
        ({"scales": [{"size": 8, "iterations": 1}]}, "greater than or equal to 16"),
        ({"scales": [{"size": 512, "iterations": float("inf")}]}, "finite|integer"),  # JSON's 1e999
    ]  # fmt: skip
    for given, message in bad:
        with pytest.raises(ValidationError, match=message):
            StyleParams.model_validate(given)
    # With keep_aspect the working size depends on the content: checked when it is known.
    loose = StyleParams(scales=[{"size": 32, "iterations": 2}, {"size": 64, "iterations": 2}], keep_aspect=True)
    with pytest.raises(ValueError, match="long side, 512 px"):
        plan_stages(loose, (384, 512))


def test_a_two_scale_run_starts_its_second_stage_from_the_first(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    seen: list[Progress] = []
    result = stylize(
        content_image, [style_image], StyleParams(seed=3, **ISSUE), on_progress=seen.append, report_every=1
    )
    assert [p.iteration for p in seen] == list(range(1, 61))
    assert [(p.stage, p.stage_size) for p in seen] == [(1, (32, 32))] * 30 + [(2, (64, 64))] * 30
    assert all(p.stages == 2 and p.total == 60 for p in seen)
    assert seen[0].image().size == content_image.size  # snapshots at the content's size, any stage
    assert [p.iteration for p in seen if p.is_snapshot] == [1, 50]
    assert result.image.size == content_image.size and result.iterations_run == 60
    assert result.best_iteration > 30  # chosen within the last stage
    assert result.stage_sizes == [(32, 32), (64, 64)]
    fresh: list[Progress] = []
    stylize(content_image, [style_image], StyleParams(iterations=1, seed=3, height=64, width=64),
            on_progress=fresh.append)  # fmt: skip
    second_start = next(p for p in seen if p.stage == 2)
    assert second_start.losses.total < 0.5 * fresh[0].losses.total


@pytest.mark.parametrize("crash_after", [10, 15])  # inside the first stage, and at its end
def test_a_run_across_stages_resumes_from_a_checkpoint_to_the_uninterrupted_result(
    content_image: Image.Image, style_image: Image.Image, crash_after: int
) -> None:
    params = StyleParams(seed=4, **TWO)
    whole = stylize(content_image, [style_image], params)
    saved: list[Checkpoint] = []
    stylize(
        content_image, [style_image], params, checkpoint_every=5, on_checkpoint=saved.append,
        should_stop=lambda: bool(saved) and saved[-1].iteration == crash_after,
    )  # fmt: skip
    checkpoint = Checkpoint.from_bytes(saved[-1].to_bytes())
    resumed = stylize(content_image, [style_image], params, resume=checkpoint)
    assert resumed.iterations_run == 30 and resumed.best_iteration == whole.best_iteration
    assert resumed.image.tobytes() == whole.image.tobytes()


def test_adam_s_moments_are_resized_with_the_image() -> None:
    x = torch.zeros(1, 3, 8, 8, requires_grad=True)
    optimizer = torch.optim.Adam([x], lr=1.0)
    x.grad = torch.randn_like(x)
    optimizer.step()
    state = resize_adam_state(optimizer.state_dict(), (16, 16))
    moments = state["state"][0]
    assert moments["exp_avg"].shape == moments["exp_avg_sq"].shape == (1, 3, 16, 16)
    assert float(moments["exp_avg_sq"].min()) >= 0.0
    assert int(moments["step"]) == 1
    y = torch.zeros(1, 3, 16, 16, requires_grad=True)
    resumed = torch.optim.Adam([y], lr=1.0)
    resumed.load_state_dict(state)  # what the next stage does


def test_the_cli_takes_scales(tmp_path, content_image: Image.Image, style_image: Image.Image) -> None:  # type: ignore[no-untyped-def]
    content, style, out = tmp_path / "c.png", tmp_path / "s.png", tmp_path / "out.png"
    content_image.save(content)
    style_image.save(style)
    common = [str(content), str(style), "-o", str(out), "--weights", "random", "-q", "--height", "64", "--width", "64"]
    assert cli_main(["stylize", *common, "--scales", "32:3,64:2"]) == 0
    assert Image.open(out).size == content_image.size
    assert cli_main(["stylize", *common, "--scales", "auto", "--iterations", "3"]) == 0
    assert cli_main(["stylize", *common, "--scales", "32:3,48:2"]) == 1
    assert cli_main(["stylize", *common, "--scales", "32"]) == 1
