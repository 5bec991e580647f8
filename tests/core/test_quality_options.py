"""The quality options on the CPU: L-BFGS, the W2 style loss, colour matching, the averaged image."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from core import Progress, StyleParams, stylize
from core.checkpoint import Checkpoint
from core.color_match import match_color, match_seed_space
from core.images import from_seed_space, to_seed_space
from core.memory import count_bytes
from core.objective import compute_targets
from core.transfer import StyleResult, initial_image
from core.vgg import vgg_extractor
from core.w2 import W2_EPS, feature_moments, sqrtm_newton_schulz, w2_loss, w2_target
from core.weights import WeightsSource

SMALL = {"height": 32, "width": 32}
TWO = {"scales": [{"size": 32, "iterations": 6}, {"size": 48, "iterations": 6}], "height": 48, "width": 48}
# Two shallow layers keep W2's matrix square roots (C x C, 12 iterations) cheap on the CPU.
SHALLOW = {"style_layers": ["conv1_1", "conv2_1"], "style_layer_weights": [1.0, 1.0]}


def image_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) in 0..1, as Neural-Tools reads pixels."""
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)


def colour_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x[0].reshape(3, -1).double()
    mean = flat.mean(dim=1)
    centred = flat - mean[:, None]
    return mean, centred @ centred.T / flat.shape[1]


# --- parameters ---------------------------------------------------------------------------


def test_the_defaults_stay_the_seeds() -> None:
    p = StyleParams()
    assert (p.optimizer, p.style_loss, p.color_match, p.average, p.lbfgs_history) == ("adam", "gram", "none", None, 100)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"optimizer": "sgd"}, "optimizer"),
        ({"lbfgs_history": 0}, "lbfgs_history"),
        ({"lbfgs_history": 1001}, "lbfgs_history"),
        ({"color_match": "lab"}, "color_match"),
        ({"style_loss": "l2"}, "style_loss"),
        ({"average": 1.0}, "average"),
        ({"average": 0.0}, "average"),
        ({"average": -0.5}, "average"),
        ({"average": float("nan")}, "average"),
        ({"average": "often"}, "average"),
    ],
)
def test_bad_option_values_are_rejected_naming_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        StyleParams(**changes)
    assert field in str(caught.value)


def test_the_schema_gives_the_form_each_option_with_its_choices_and_bounds() -> None:
    properties = StyleParams.json_schema()["properties"]
    assert properties["optimizer"]["enum"] == ["adam", "lbfgs"] and properties["optimizer"]["default"] == "adam"
    assert properties["color_match"]["enum"] == ["none", "pca", "chol", "sym"]
    assert properties["style_loss"]["enum"] == ["gram", "w2"]
    number = next(b for b in properties["average"]["anyOf"] if b["type"] == "number")
    assert (number["exclusiveMinimum"], number["exclusiveMaximum"]) == (0.0, 1.0)
    assert properties["average"]["default"] is None and properties["lbfgs_history"]["default"] == 100


def test_the_memory_model_counts_the_lbfgs_history_and_the_average() -> None:
    size = (256, 256)
    adam = count_bytes(size, StyleParams(), "fp32", checkpointing=False).total
    lbfgs = count_bytes(size, StyleParams(optimizer="lbfgs", lbfgs_history=100), "fp32", checkpointing=False).total
    averaged = count_bytes(size, StyleParams(average=0.99), "fp32", checkpointing=False).total
    image = 3 * size[0] * size[1] * 4
    assert lbfgs - adam >= 2 * 100 * image  # two image-sized vectors per remembered step
    assert averaged - adam >= image


# --- W2 ------------------------------------------------------------------------------------


def test_newton_schulz_square_root_matches_the_eigendecomposition() -> None:
    generator = torch.Generator().manual_seed(0)
    b = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    spd = b @ b.T + torch.eye(6, dtype=torch.float64)
    values, vectors = torch.linalg.eigh(spd)
    exact = vectors @ torch.diag(values.sqrt()) @ vectors.T
    root = sqrtm_newton_schulz(spd.float())
    assert (root.double() - exact).abs().max() < 1e-3
    assert (root @ root - spd.float()).abs().max() < 1e-3


def test_w2_is_zero_at_the_target_statistics_positive_elsewhere_with_finite_gradients() -> None:
    generator = torch.Generator().manual_seed(1)
    style = torch.randn(1, 8, 12, 12, generator=generator) * 3 + 1  # many more positions than channels
    target = w2_target([feature_moments(style)], [1.0])
    assert abs(w2_loss(style, *target).item()) < 1e-4
    # The same statistics at another size and order of positions: still the target.
    shuffled = style.flatten(2)[:, :, torch.randperm(144, generator=generator)].reshape(1, 8, 9, 16)
    assert abs(w2_loss(shuffled, *target).item()) < 1e-4
    other = (torch.randn(1, 8, 12, 12, generator=generator) * 2).requires_grad_(True)
    loss = w2_loss(other, *target)
    assert loss.item() > 0.1
    loss.backward()
    assert other.grad is not None and torch.isfinite(other.grad).all() and other.grad.abs().sum() > 0
    shifted = style + 0.5  # only the mean moves: the covariance term stays zero
    assert w2_loss(shifted, *target).item() == pytest.approx(0.25, rel=1e-3)


def test_w2_statistics_are_fp32_for_bf16_features_and_either_memory_layout() -> None:
    generator = torch.Generator().manual_seed(2)
    style = torch.randn(1, 8, 12, 12, generator=generator)
    target = w2_target([feature_moments(style)], [1.0])
    x = torch.randn(1, 8, 12, 12, generator=generator)
    plain = w2_loss(x, *target)
    last = w2_loss(x.contiguous(memory_format=torch.channels_last), *target)
    half = w2_loss(x.bfloat16().requires_grad_(True), *target)
    assert half.dtype == torch.float32 and plain.dtype == torch.float32
    assert last.item() == pytest.approx(plain.item(), rel=1e-4)
    assert half.item() == pytest.approx(plain.item(), rel=2e-2)


def test_two_styles_mix_by_their_means_and_second_moments() -> None:
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(1, 4, 8, 8, generator=generator) + 2
    b = torch.randn(1, 4, 8, 8, generator=generator) * 3 - 1
    (mean_a, second_a), (mean_b, second_b) = feature_moments(a), feature_moments(b)
    mean, cov, root = w2_target([(mean_a, second_a), (mean_b, second_b)], [0.25, 0.75])
    want_mean = 0.25 * mean_a + 0.75 * mean_b
    want_cov = 0.25 * second_a + 0.75 * second_b - torch.outer(want_mean, want_mean) + W2_EPS * torch.eye(4)
    assert torch.allclose(mean, want_mean, atol=1e-5) and torch.allclose(cov, want_cov, atol=1e-4)
    assert torch.allclose(root @ root, cov, atol=1e-3)
    # Mixed equally, two styles are one style whose positions are both's.
    pooled = w2_target([feature_moments(torch.cat([a, b], dim=3))], [1.0])
    even = w2_target([feature_moments(a), feature_moments(b)], [0.5, 0.5])
    assert all(torch.allclose(p, q, atol=1e-4) for p, q in zip(pooled, even, strict=True))


def test_compute_targets_mixes_the_style_images_by_the_blend_weights(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(style_loss="w2", content_layers=["conv1_1"], **SHALLOW, **SMALL)
    extractor = vgg_extractor(["conv1_1", "conv1_1", "conv2_1"], source=WeightsSource("random"))
    content = to_seed_space(content_image, (32, 32))
    styles = [to_seed_space(style_image, (32, 32)), to_seed_space(content_image.rotate(90), (32, 32))]
    _, targets = compute_targets(extractor, params, content, styles, [0.3, 0.7])
    assert len(targets) == 3 * 2  # mean, covariance and its root per style layer
    with torch.no_grad():
        maps = [extractor(s)[1:] for s in styles]
    want = w2_target([feature_moments(maps[0][1]), feature_moments(maps[1][1])], [0.3, 0.7])
    assert all(torch.allclose(got, w, rtol=1e-4, atol=1e-3) for got, w in zip(targets[3:], want, strict=True))


# --- colour matching -------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["pca", "chol", "sym"])
def test_colour_matching_gives_the_style_the_contents_mean_and_covariance(
    mode: str, content_image: Image.Image, style_image: Image.Image
) -> None:
    content, style = image_tensor(content_image), image_tensor(style_image)
    matched = match_color(style, content, mode)  # type: ignore[arg-type]
    got_mean, got_cov = colour_stats(matched)
    want_mean, want_cov = colour_stats(content)
    assert (got_mean - want_mean).abs().max() < 1e-3
    assert (got_cov - want_cov).abs().max() < 1e-3
    assert (colour_stats(style)[1] - want_cov).abs().max() > 1e-2  # it was not so before
    # In the seed's space (0..255 minus the channel mean), as the run does it.
    seed_content, seed_style = to_seed_space(content_image, (40, 48)), to_seed_space(style_image, (40, 40))
    seed_matched = match_seed_space(seed_style.contiguous(memory_format=torch.channels_last), seed_content, mode)  # type: ignore[arg-type]
    got_mean, got_cov = colour_stats(seed_matched / 255.0)
    want_mean, want_cov = colour_stats(seed_content / 255.0)
    assert (got_mean - want_mean).abs().max() < 1e-3 and (got_cov - want_cov).abs().max() < 1e-3


def test_the_three_colour_modes_differ_and_none_changes_nothing(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    content, style = image_tensor(content_image), image_tensor(style_image)
    pca, chol, sym = (match_color(style, content, m) for m in ("pca", "chol", "sym"))  # type: ignore[arg-type]
    assert not torch.allclose(pca, chol, atol=1e-3) and not torch.allclose(chol, sym, atol=1e-3)
    assert match_color(style, content, "none") is style


def test_colour_matching_changes_the_run_and_its_style_init(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=3, seed=0, **SMALL)
    plain = stylize(content_image, [style_image], params)
    matched = stylize(content_image, [style_image], params.model_copy(update={"color_match": "pca"}))
    assert plain.losses is not None and matched.losses is not None
    assert plain.losses.style != matched.losses.style
    # init "style" starts from the matched style image, whose colours are the content's.
    unstarted = params.model_copy(update={"color_match": "pca", "init": "style"})
    start = stylize(content_image, [style_image], unstarted, should_stop=lambda: True).image
    got = np.asarray(start, dtype=float).mean(axis=(0, 1))
    assert np.abs(got - np.asarray(content_image, dtype=float).mean(axis=(0, 1))).max() < 3.0
    assert np.abs(got - np.asarray(style_image, dtype=float).mean(axis=(0, 1))).max() > 10.0


# --- L-BFGS ----------------------------------------------------------------------------------


def test_lbfgs_ends_lower_than_adam_after_twenty_steps(content_image: Image.Image, style_image: Image.Image) -> None:
    params = StyleParams(iterations=20, seed=0, **SMALL)
    adam = stylize(content_image, [style_image], params)
    lbfgs = stylize(content_image, [style_image], params.model_copy(update={"optimizer": "lbfgs"}))
    assert adam.losses is not None and lbfgs.losses is not None
    assert lbfgs.losses.total < adam.losses.total, (lbfgs.losses, adam.losses)


def test_lbfgs_reports_and_snapshots_like_adam_and_keeps_the_best_image(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=20, seed=0, optimizer="lbfgs", snapshot_every=10, **SMALL)
    seen: list[Progress] = []
    result = stylize(content_image, [style_image], params, on_progress=seen.append, report_every=1, copy_image=True)
    assert [p.iteration for p in seen] == list(range(1, 21))  # one optimiser step an iteration
    assert [p.iteration for p in seen if p.is_snapshot] == [1, 10, 20]
    totals = [p.losses.total for p in seen]
    best = int(np.argmin(totals))
    assert result.iterations_run == 20 and result.best_iteration == seen[best].iteration
    assert result.losses is not None and result.losses.total == pytest.approx(totals[best])
    assert result.image.tobytes() == seen[best].image().tobytes()


def test_lbfgs_stops_cleanly_on_a_cancel_in_the_middle_of_a_step(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    cancel = {"asked": False}
    seen: list[Progress] = []

    def report(progress: Progress) -> None:  # called between the evaluation and the update
        seen.append(progress)
        if progress.iteration == 5:
            cancel["asked"] = True

    params = StyleParams(iterations=500, seed=0, optimizer="lbfgs", **SMALL)
    result = stylize(
        content_image, [style_image], params, on_progress=report, report_every=1, should_stop=lambda: cancel["asked"]
    )
    assert result.stopped and result.iterations_run == 5 and seen[-1].iteration == 5
    assert result.losses is not None and np.isfinite(result.losses.total)
    assert result.image.size == content_image.size


def test_lbfgs_resumes_from_a_checkpoint_to_the_uninterrupted_result(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=16, seed=9, optimizer="lbfgs", lbfgs_history=5, **SMALL)
    straight = stylize(content_image, [style_image], params)
    saved: list[Checkpoint] = []
    first = stylize(
        content_image, [style_image], params, checkpoint_every=8, on_checkpoint=saved.append,
        should_stop=lambda: len(saved) == 1,
    )  # fmt: skip
    assert first.stopped and [c.iteration for c in saved] == [8]
    assert len(saved[0].optimizer_state["state"][0]["old_dirs"]) == 5  # the history is in it, full
    resumed = stylize(content_image, [style_image], params, resume=Checkpoint.from_bytes(saved[0].to_bytes()))
    assert resumed.iterations_run == 16 and resumed.best_iteration == straight.best_iteration
    assert resumed.image.tobytes() == straight.image.tobytes()


def test_an_lbfgs_history_too_big_to_keep_is_left_out_and_the_run_resumes_afresh(
    content_image: Image.Image, style_image: Image.Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.checkpoint

    params = StyleParams(iterations=16, seed=9, optimizer="lbfgs", lbfgs_history=5, **SMALL)
    straight = stylize(content_image, [style_image], params)
    # 32x32: a vector is 12 kB; the 5-pair history (and L-BFGS's other vectors) is over 100 kB.
    monkeypatch.setattr(core.checkpoint, "MAX_LBFGS_HISTORY_BYTES", 100_000)
    saved: list[Checkpoint] = []
    stylize(
        content_image, [style_image], params, checkpoint_every=8, on_checkpoint=saved.append,
        should_stop=lambda: len(saved) == 1,
    )  # fmt: skip
    state = saved[0].optimizer_state["state"][0]
    assert list(state) == ["nst_loss_scale"], list(state)  # the history is out, the loss scale kept
    assert len(saved[0].to_bytes()) < 100_000
    resumed = stylize(content_image, [style_image], params, resume=Checkpoint.from_bytes(saved[0].to_bytes()))
    assert resumed.iterations_run == 16 and not resumed.stopped
    # A fresh history from iteration 9 on: a different path, still going down.
    assert resumed.image.tobytes() != straight.image.tobytes()
    assert resumed.losses.total < saved[0].best_losses[0].item()


# --- the averaged image ----------------------------------------------------------------------


def test_the_average_is_the_bias_corrected_ema_of_the_iterates(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    decay, steps = 0.99, 6
    params = StyleParams(iterations=steps, seed=2, snapshot_every=4, **SMALL)
    # The iterates x_1..x_6 of the plain run (the average does not change the optimisation).
    iterates: list[Checkpoint] = []
    stylize(content_image, [style_image], params, checkpoint_every=1, on_checkpoint=iterates.append)
    content_x = to_seed_space(content_image, (32, 32))
    x0 = initial_image(params, content_x, to_seed_space(style_image, (32, 32)), seed=2)
    xs = [x0] + [c.image for c in iterates]

    def by_hand(count: int) -> torch.Tensor:
        value = torch.zeros_like(x0)
        for x in xs[:count]:
            value = decay * value + (1 - decay) * x
        return value / (1 - decay**count)

    snapshots: list[Progress] = []
    saved: list[Checkpoint] = []
    averaged = params.model_copy(update={"average": decay})
    result = stylize(
        content_image, [style_image], averaged, on_progress=snapshots.append, checkpoint_every=steps,
        on_checkpoint=saved.append,
    )  # fmt: skip
    final = saved[-1].average / (1 - decay ** saved[-1].average_count)  # type: ignore[operator]
    assert saved[-1].average_count == steps + 1 and torch.allclose(final, by_hand(steps + 1), atol=1e-4)
    original = content_image.size[::-1]

    def same_picture(a: Image.Image, b: Image.Image) -> bool:
        return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()) <= 1

    assert same_picture(result.image, from_seed_space(by_hand(steps + 1), original))
    assert result.best_iteration == steps and result.losses is not None
    # A snapshot at iteration t shows the average of x_0..x_{t-1}, the images stepped from so far.
    assert [p.iteration for p in snapshots] == [1, 4]
    assert same_picture(snapshots[0].image(), from_seed_space(x0, original))
    assert same_picture(snapshots[1].image(), from_seed_space(by_hand(4), original))
    assert not same_picture(snapshots[1].image(), from_seed_space(xs[3], original))


def uninterrupted_and_resumed(
    content_image: Image.Image, style_image: Image.Image, params: StyleParams, crash_after: int
) -> tuple[StyleResult, StyleResult]:
    """The run straight through, and the run stopped after checkpointing `crash_after` (every 3
    iterations) then resumed from that checkpoint's bytes."""
    whole = stylize(content_image, [style_image], params)
    saved: list[Checkpoint] = []
    stylize(
        content_image, [style_image], params, checkpoint_every=3, on_checkpoint=saved.append,
        should_stop=lambda: bool(saved) and saved[-1].iteration == crash_after,
    )  # fmt: skip
    resumed = stylize(content_image, [style_image], params, resume=Checkpoint.from_bytes(saved[-1].to_bytes()))
    return whole, resumed


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
@pytest.mark.parametrize("crash_after", [3, 6])  # inside the first scale, and at its end
def test_averaged_coarse_to_fine_runs_resume_to_the_uninterrupted_result(
    content_image: Image.Image, style_image: Image.Image, optimizer: str, crash_after: int
) -> None:
    params = StyleParams(seed=4, average=0.9, optimizer=optimizer, lbfgs_history=4, **TWO)
    whole, resumed = uninterrupted_and_resumed(content_image, style_image, params, crash_after)
    assert resumed.iterations_run == 12 and resumed.stage_sizes == [(32, 32), (48, 48)]
    assert resumed.image.tobytes() == whole.image.tobytes()
    assert resumed.losses == whole.losses


def test_a_second_scale_starts_afresh_from_the_first_scales_average(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(seed=5, average=0.5, snapshot_every=7, **TWO)  # iteration 7 opens the second scale
    seen: list[Progress] = []
    saved: list[Checkpoint] = []
    stylize(
        content_image, [style_image], params, on_progress=seen.append, checkpoint_every=6, on_checkpoint=saved.append
    )
    first_scale_average = saved[0].average / (1 - 0.5 ** saved[0].average_count)  # type: ignore[operator]
    upsampled = torch.nn.functional.interpolate(first_scale_average, size=(48, 48), mode="bicubic")
    opening = next(p for p in seen if p.iteration == 7)
    assert opening.stage == 2
    want = from_seed_space(upsampled, content_image.size[::-1])
    diff = np.abs(np.asarray(opening.image(), dtype=int) - np.asarray(want, dtype=int)).max()
    assert diff <= 1  # the average restarted: one sample, the scale's starting image


# --- every option together, with the engine's other paths ------------------------------------


ALL_ON = {"optimizer": "lbfgs", "style_loss": "w2", "color_match": "sym", "average": 0.9}


@pytest.mark.parametrize("crash_after", [3, 6])
def test_every_option_together_across_scales_resumes_to_the_uninterrupted_result(
    content_image: Image.Image, style_image: Image.Image, crash_after: int
) -> None:
    params = StyleParams(seed=6, lbfgs_history=4, **ALL_ON, **SHALLOW, **TWO)
    whole, resumed = uninterrupted_and_resumed(content_image, style_image, params, crash_after)
    assert resumed.image.tobytes() == whole.image.tobytes() and resumed.losses == whole.losses


def test_every_option_together_with_activation_checkpointing_gives_the_same_result(
    content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=4, seed=1, **ALL_ON, **SHALLOW, **SMALL)
    stored = stylize(content_image, [style_image], params)
    recomputed = stylize(content_image, [style_image], params, checkpointing=True)
    assert recomputed.checkpointing and stored.losses is not None and recomputed.losses is not None
    assert recomputed.losses.total == pytest.approx(stored.losses.total, rel=1e-4)


def test_every_option_together_runs_in_bf16_with_fp32_statistics(
    monkeypatch: pytest.MonkeyPatch, content_image: Image.Image, style_image: Image.Image
) -> None:
    params = StyleParams(iterations=4, seed=1, content_layers=["conv1_1"], **ALL_ON, **SHALLOW, **SMALL)
    runs: dict[str, list[Progress]] = {"fp32": [], "bf16": []}
    results = {}
    for precision, seen in runs.items():
        monkeypatch.setenv("NST_PRECISION", precision)
        results[precision] = stylize(content_image, [style_image], params, on_progress=seen.append, report_every=1)
    # The same starting image scored both ways (L-BFGS without a line search then parts ways).
    assert runs["bf16"][0].losses.total == pytest.approx(runs["fp32"][0].losses.total, rel=2e-2)
    assert all(np.isfinite(p.losses.total) for p in runs["bf16"])
    fast = results["bf16"].losses
    assert fast is not None and np.isfinite(fast.total) and results["bf16"].iterations_run == 4


@pytest.mark.slow  # torch.compile
def test_every_option_together_compiles_to_the_eager_numbers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, content_image: Image.Image,
    style_image: Image.Image,
) -> None:  # fmt: skip
    """torch.compile for real (inductor on the CPU), on one convolution to keep it short."""
    from torch._dynamo.utils import counters

    params = StyleParams(
        iterations=3, height=16, width=16, seed=0, content_layers=["conv1_1"], style_layers=["conv1_1"],
        style_layer_weights=[1.0], **ALL_ON,
    )  # fmt: skip
    runs: dict[str, list[Progress]] = {"0": [], "1": []}
    counters.clear()
    for compiled, seen in runs.items():
        monkeypatch.setenv("NST_COMPILE", compiled)
        with caplog.at_level(logging.WARNING, logger="core.engine"):
            stylize(content_image, [style_image], params, on_progress=seen.append, report_every=1)
    assert counters["stats"]["unique_graphs"] >= 1 and "running eagerly" not in caplog.text
    # The same starting image, the same loss (L-BFGS without a line search then magnifies rounding).
    assert runs["1"][0].losses.total == pytest.approx(runs["0"][0].losses.total, rel=1e-4)
    assert len(runs["1"]) == 3 and all(np.isfinite(p.losses.total) for p in runs["1"])
