"""The optimisation loop on the CPU with random weights and tiny images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core import Progress, StyleParams, stylize
from core.transfer import initial_image
from core.weights import WeightsSource

SMALL = {"height": 32, "width": 32}


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def test_loss_falls_and_result_has_the_original_size(content_image: Image.Image, style_image: Image.Image) -> None:
    seen: list[Progress] = []
    result = stylize(
        content_image, [style_image], StyleParams(iterations=40, seed=0, **SMALL), on_progress=seen.append,
        report_every=1,
    )  # fmt: skip
    assert result.image.size == content_image.size and result.image.mode == "RGB"
    assert seen[-1].losses.total < 0.5 * seen[0].losses.total
    assert result.losses is not None and result.losses.total <= min(p.losses.total for p in seen)
    assert result.weights == "random" and result.iterations_run == 40


def test_result_is_the_lowest_loss_image_not_the_last(content_image: Image.Image, style_image: Image.Image) -> None:
    # A huge step makes Adam overshoot, so the loss goes up again after its lowest point.
    params = StyleParams(iterations=10, seed=0, learning_rate=400.0, **SMALL)
    seen: list[Progress] = []
    result = stylize(content_image, [style_image], params, on_progress=seen.append, report_every=1, copy_image=True)
    totals = [p.losses.total for p in seen]
    best = int(np.argmin(totals))
    assert best < len(totals) - 1, "the test needs a run whose last image is not its best"
    assert result.best_iteration == seen[best].iteration
    assert result.losses is not None and result.losses.total == pytest.approx(totals[best])
    assert png_bytes(result.image) == png_bytes(seen[best].image())
    assert png_bytes(result.image) != png_bytes(seen[-1].image())


def test_snapshots_at_one_and_every_fifty(content_image: Image.Image, style_image: Image.Image) -> None:
    snapshots: list[Progress] = []
    params = StyleParams(iterations=120, seed=0, height=16, width=16)
    stylize(content_image, [style_image], params, on_progress=snapshots.append)
    assert [p.iteration for p in snapshots] == [1, 50, 100]
    assert all(p.is_snapshot and p.total == 120 for p in snapshots)
    assert all(p.image().size == content_image.size for p in snapshots)
    assert snapshots[-1].iterations_per_second > 0 and snapshots[-1].eta_seconds is not None


def test_should_stop_ends_the_run_within_one_iteration(content_image: Image.Image, style_image: Image.Image) -> None:
    asked: list[int] = []
    seen: list[Progress] = []

    def stop_after_seven() -> bool:
        asked.append(1)
        return len(asked) > 7

    result = stylize(
        content_image, [style_image], StyleParams(iterations=500, **SMALL), on_progress=seen.append,
        should_stop=stop_after_seven, report_every=1,
    )  # fmt: skip
    assert result.stopped and result.iterations_run == 7 and seen[-1].iteration == 7
    assert result.image.size == content_image.size


def test_stop_before_the_first_iteration_returns_the_initial_image(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    result = stylize(content_image, [style_image], StyleParams(iterations=5, **SMALL), should_stop=lambda: True)
    assert result.stopped and result.iterations_run == 0 and result.losses is None


def test_the_same_seed_gives_the_same_bytes(content_image: Image.Image, style_image: Image.Image) -> None:
    params = StyleParams(iterations=15, seed=1234, **SMALL)
    first = stylize(content_image, [style_image], params)
    second = stylize(content_image, [style_image], params)
    other = stylize(content_image, [style_image], params.model_copy(update={"seed": 4321}))
    assert png_bytes(first.image) == png_bytes(second.image)
    assert png_bytes(first.image) != png_bytes(other.image)
    assert first.seed == 1234


def test_an_unseeded_run_reports_the_seed_that_reproduces_it(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=5, **SMALL)
    first = stylize(content_image, [style_image], params)
    again = stylize(content_image, [style_image], params.model_copy(update={"seed": first.seed}))
    assert png_bytes(first.image) == png_bytes(again.image)


def test_preserve_colors_keeps_the_content_chroma(content_image: Image.Image, style_image: Image.Image) -> None:
    params = StyleParams(iterations=20, seed=0, preserve_colors=True, **SMALL)
    result = stylize(content_image, [style_image], params)
    plain = stylize(content_image, [style_image], params.model_copy(update={"preserve_colors": False}))

    def chroma_error(img: Image.Image) -> float:
        ours = np.asarray(img.convert("YCbCr"), dtype=float)[:, :, 1:]
        want = np.asarray(content_image.convert("YCbCr"), dtype=float)[:, :, 1:]
        return float(np.abs(ours - want).mean())

    assert chroma_error(result.image) < 3.0
    assert chroma_error(result.image) < chroma_error(plain.image) / 2


def test_several_styles_blend_and_blend_weights_matter(content_image: Image.Image, style_image: Image.Image) -> None:
    second = style_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("L").convert("RGB")
    base = StyleParams(iterations=10, seed=0, **SMALL)
    even = stylize(content_image, [style_image, second], base)
    skewed = stylize(content_image, [style_image, second], base.model_copy(update={"style_blend_weights": [1, 0.01]}))
    only_first = stylize(content_image, [style_image], base)
    assert png_bytes(even.image) != png_bytes(skewed.image)
    assert even.losses is not None and skewed.losses is not None and only_first.losses is not None
    with pytest.raises(ValueError, match="style_blend_weights"):
        stylize(content_image, [style_image], base.model_copy(update={"style_blend_weights": [1.0, 1.0]}))


@pytest.mark.parametrize(
    "changes",
    [
        {"init": "content"},
        {"init": "style"},
        {"init": "noise"},
        {"pooling": "max"},
        {"tv_weight": 1e-3},
        {"keep_aspect": True},
        {"style_scale": 0.5},
        {"content_layers": ["relu4_2", "conv3_2"], "content_layer_weights": [1.0, 0.5]},
        {"content_layers": [], "content_layer_weights": []},
        {"style_layers": [], "style_layer_weights": []},
    ],
)
def test_every_option_runs(content_image: Image.Image, style_image: Image.Image, changes: dict[str, object]) -> None:
    params = StyleParams(iterations=3, seed=0, **SMALL).model_copy(update=changes)
    result = stylize(content_image, [style_image], StyleParams.model_validate(params.model_dump()))
    assert result.losses is not None and np.isfinite(result.losses.total)
    assert result.image.size == content_image.size


def test_keep_aspect_changes_the_working_size(content_image: Image.Image, style_image: Image.Image) -> None:
    result = stylize(content_image, [style_image], StyleParams(iterations=1, keep_aspect=True, height=64, width=64))
    assert result.working_size == (53, 64)  # 40x48 content fitted in 64x64


def test_initial_images_follow_the_seed(content_image: Image.Image) -> None:
    import torch

    content = torch.full((1, 3, 8, 8), 10.0)
    blend = initial_image(StyleParams(seed=5), content, content, seed=5)
    noise = initial_image(StyleParams(init="noise"), content, content, seed=5)
    assert torch.equal(blend, 0.7 * noise + 0.3 * content)
    assert noise.min() >= -20 and noise.max() <= 20 and torch.equal(noise, noise.round())
    assert len(noise.unique()) > 20


def test_explicit_weights_source_is_reported(content_image: Image.Image, style_image: Image.Image) -> None:
    result = stylize(content_image, [style_image], StyleParams(iterations=1, **SMALL), weights=WeightsSource("random"))
    assert result.weights == "random"


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_result(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    from core.checkpoint import Checkpoint

    params = StyleParams(iterations=24, seed=9, **SMALL)
    straight = stylize(content_image, [style_image], params)
    saved: list[Checkpoint] = []
    first = stylize(
        content_image, [style_image], params, checkpoint_every=10, on_checkpoint=saved.append,
        should_stop=lambda: len(saved) == 1,  # "crash" right after the first checkpoint
    )  # fmt: skip
    assert first.stopped and [c.iteration for c in saved] == [10]
    checkpoint = Checkpoint.from_bytes(saved[0].to_bytes())  # as the worker stores it
    seen: list[Progress] = []
    resumed = stylize(content_image, [style_image], params, resume=checkpoint, on_progress=seen.append)
    assert seen == []  # the only snapshot below 24 is iteration 1, which is not run again
    assert resumed.iterations_run == 24 and resumed.seed == 9
    assert resumed.best_iteration == straight.best_iteration
    assert png_bytes(resumed.image) == png_bytes(straight.image)


def test_a_checkpoint_of_another_size_is_refused(content_image: Image.Image, style_image: Image.Image) -> None:
    from core.checkpoint import Checkpoint

    saved: list[Checkpoint] = []
    stylize(
        content_image, [style_image], StyleParams(iterations=3, **SMALL), checkpoint_every=2, on_checkpoint=saved.append
    )
    with pytest.raises(ValueError, match="checkpoint"):
        stylize(content_image, [style_image], StyleParams(iterations=3, height=16, width=16), resume=saved[0])
