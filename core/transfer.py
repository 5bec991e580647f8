"""The optimisation loop of Gatys et al. as the seed runs it: Adam on the pixels of one image.

The quality options change parts of it, each in its own module: L-BFGS (core.optimizers), the
W2 style loss (core.w2), colour matching of the style images (core.color_match) and the
averaged image (core.averaging).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from core.averaging import ImageAverage
from core.checkpoint import Checkpoint
from core.color_match import match_seed_space
from core.decode import Size, image_size, to_rgb
from core.device import resolve_device
from core.engine import EngineOptions, loss_function, mark_iteration
from core.handoff import HostCopy, copy_to_host
from core.images import from_seed_space, style_size, to_seed_space, transfer_luminance, working_size
from core.objective import LOSS_TERMS, LossFunction, Targets, compute_targets
from core.optimizers import carry_state, image_layout, make_optimizer, take_step
from core.optimizers import resize_adam_state as resize_adam_state  # where the tests and benches found it
from core.params import StyleParams
from core.scales import Stage, plan_stages, stage_of
from core.sizes import fit_within
from core.vgg import VGGFeatures, vgg_extractor
from core.weights import WeightsSource

log = logging.getLogger(__name__)

NOISE_RANGE = 20  # uniform integers in [-20, 20]


@dataclass(frozen=True)
class Losses:
    """Loss terms of one iteration: content and style before alpha and beta, total after."""

    total: float
    content: float
    style: float
    tv: float

    def public(self) -> dict[str, float]:
        """The terms the service reports (spec/api.md)."""
        return {"total": self.total, "content": self.content, "style": self.style}

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> Losses:
        return cls(**dict(zip(LOSS_TERMS, values.tolist(), strict=True)))


@dataclass(frozen=True)
class Progress:
    """What a caller learns at a report: counts, speed, and losses and image on request.

    The loop copies the losses (and, at a snapshot, the image) out without waiting for the device
    (core.handoff): a caller may keep the report and read it on another thread, where reading
    waits for the copy to land; a caller that skips it makes the loop wait for nothing.
    """

    iteration: int
    total: int
    elapsed: float
    iterations_per_second: float
    is_snapshot: bool
    stage: int  # coarse-to-fine: which stage runs (from 1), of `stages`, at `stage_size`
    stages: int
    stage_size: Size
    _copy: HostCopy = field(repr=False, compare=False)  # the losses, and the image at a snapshot
    _render: Callable[[torch.Tensor, int | None], Image.Image] = field(repr=False, compare=False)

    @cached_property
    def losses(self) -> Losses:
        """The loss terms of this iteration (reading them waits for their copy)."""
        return Losses.from_tensor(self._copy.get()[0])

    def image(self, max_side: int | None = None) -> Image.Image:
        """The image whose losses these are (with `average`, the average so far instead), at the
        content's original size, or scaled down to fit `max_side` on its long side (never up);
        made on demand. Only at a snapshot, or with `copy_image` reports."""
        copied = self._copy.get()
        if len(copied) < 2:
            raise ValueError(f"iteration {self.iteration}: no image was copied for this report")
        return self._render(copied[1], max_side)

    @property
    def eta_seconds(self) -> float | None:
        if self.iterations_per_second <= 0:
            return None
        return (self.total - self.iteration) / self.iterations_per_second


@dataclass(frozen=True)
class StyleResult:
    image: Image.Image
    losses: Losses | None  # of the returned image; None when stopped before iteration 1
    best_iteration: int  # 0: the initial image
    iterations_run: int
    stopped: bool
    seed: int
    weights: str  # "imagenet", "random" or the weights file: every output says what made it
    device: str
    working_size: Size
    elapsed: float
    checkpointing: bool = False  # whether the network's inside was recomputed rather than stored
    stage_sizes: list[Size] = field(default_factory=list)  # the working sizes run, in order


ProgressCallback = Callable[[Progress], None]
StopCheck = Callable[[], bool]
CheckpointCallback = Callable[[Checkpoint], None]


def stylize(
    content: Image.Image,
    styles: Sequence[Image.Image],
    params: StyleParams | None = None,
    *,
    device: str | torch.device | None = None,
    weights: WeightsSource | None = None,
    on_progress: ProgressCallback | None = None,
    should_stop: StopCheck | None = None,
    report_every: int | None = None,
    checkpoint_every: int | None = None,
    on_checkpoint: CheckpointCallback | None = None,
    resume: Checkpoint | None = None,
    checkpointing: bool = False,
    copy_image: bool = False,
) -> StyleResult:
    """Optimise an image with `content`'s content and `styles`' style.

    `on_progress` is called at iteration 1 and every `params.snapshot_every` iterations (and,
    with `report_every`, that often and at the last iteration too, `is_snapshot` telling which);
    `should_stop` is asked before every iteration and ends the run cleanly with the best image so far.
    A report carries the image at snapshots (and at every report with `copy_image`).
    `on_checkpoint` receives the whole state every `checkpoint_every` iterations; `resume`
    continues from such a checkpoint as if the run had never stopped. `checkpointing` recomputes
    the network's inside in the backward pass instead of storing it (core.memory says when).

    With `params.scales`, the stages run in turn (core.scales): each starts from the last one's
    image, upsampled (bicubic), with Adam's moments resized along (L-BFGS starts afresh), and
    recomputes its targets at its size. Iterations count across stages; the best image is the
    last stage's.

    With `params.average`, reports show and the result is the bias-corrected moving average of
    the image rather than the lowest-loss image (crowsonkb's choice); it restarts at each stage,
    which starts from the last one's average; the result's losses are the average's own, its
    `best_iteration` the last iteration run. A report's losses stay those of the image stepped from.
    """
    params = params or StyleParams()
    if not styles:
        raise ValueError("at least one style image is needed")
    blend = params.blend_weights(len(styles))
    run_device = resolve_device(device)
    source = weights or WeightsSource.from_env()
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "big") >> 1

    content = to_rgb(content)
    styles = [to_rgb(s) for s in styles]
    original = image_size(content)
    size = working_size(original, params)
    stages = plan_stages(params, size)

    options = EngineOptions.for_device(run_device)
    layout = options.memory_format
    x_layout = image_layout(params, layout)
    extractor = vgg_extractor(
        [*params.content_layers, *params.style_layers],
        pooling=params.pooling,
        source=source,
        device=run_device,
        channels_last=options.channels_last,
        checkpointing=checkpointing,
    )
    loss = loss_function(extractor, params, options)

    def render(pixels: torch.Tensor, max_side: int | None = None) -> Image.Image:
        image = from_seed_space(pixels, fit_within(original, max_side))
        return transfer_luminance(image, content) if params.preserve_colors else image

    def stage_inputs(stage: Stage) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The content and (colour-matched) style images at a stage's size, in seed space."""
        content_x = to_seed_space(content, stage.size).to(run_device).contiguous(memory_format=layout)
        style_xs = [to_seed_space(s, style_size(image_size(s), stage.size, params)).to(run_device) for s in styles]
        style_xs = [match_seed_space(s, content_x, params.color_match) for s in style_xs]
        return content_x, [s.contiguous(memory_format=layout) for s in style_xs]

    done = 0  # iterations completed
    x: torch.Tensor | None = None
    optimizer_state: dict[str, Any] | None = None
    average: ImageAverage | None = None
    targets: Targets | None = None
    # The best image is tracked on the device, so the loop never waits for the GPU to learn
    # whether a loss fell; only reports read numbers back.
    best_x: torch.Tensor | None = None
    best_losses = torch.full((len(LOSS_TERMS),), math.inf, device=run_device)
    best_iteration = torch.zeros((), dtype=torch.long, device=run_device)
    if resume is not None:
        expected = stages[stage_of(stages, resume.iteration)].size
        if tuple(resume.image.shape[2:]) != expected:
            raise ValueError(f"the checkpoint is {tuple(resume.image.shape[2:])}, the job works at {expected}")
        seed, done, x, optimizer_state = resume.seed, resume.iteration, resume.image, resume.optimizer_state
        best_x = resume.best_image.to(run_device)
        best_losses = resume.best_losses.to(run_device)
        best_iteration = torch.tensor(resume.best_iteration, device=run_device)
        if params.average is not None and resume.average is not None:
            average = ImageAverage(params.average, resume.average.to(run_device), resume.average_count)

    start = last_time = time.perf_counter()
    last_report = done
    stopped = False
    for index, stage in enumerate(stages):
        if stage.last <= done:
            continue
        content_x, style_xs = stage_inputs(stage)
        targets = compute_targets(extractor, params, content_x, style_xs, blend)
        starting = done < stage.first  # a stage starting now, not one resumed in its middle
        if x is None:
            x = initial_image(params, content_x, style_xs[0], seed)
        else:
            if starting and average is not None:
                x = average.get()  # crowsonkb: a scale starts from the last one's averaged image
            if tuple(x.shape[2:]) != stage.size:
                x = upsample(x.to(run_device), stage.size)
                optimizer_state = carry_state(params, optimizer_state, stage.size, x_layout)
        del content_x, style_xs  # the targets hold what the stage needs
        x = x.to(run_device).contiguous(memory_format=x_layout).requires_grad_(True)
        optimizer = make_optimizer(params, x)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
        if starting:  # its best image, and its average, are its own
            best_x = x.detach().clone()
            best_losses = torch.full((len(LOSS_TERMS),), math.inf, device=run_device)
            best_iteration = torch.zeros((), dtype=torch.long, device=run_device)
        if params.average is not None and (starting or average is None):
            average = ImageAverage.start(params.average, x)
        assert best_x is not None
        for iteration in range(done + 1, stage.last + 1):
            if should_stop is not None and should_stop():
                stopped = True
                break
            mark_iteration(options, run_device)
            optimizer.zero_grad(set_to_none=True)
            losses = loss(x, *targets)
            losses[0].backward()
            with torch.no_grad():
                # The image whose loss was measured, before the step (not the seed's quirk of
                # storing the image after the update).
                better = losses[0] < best_losses[0]
                best_losses = torch.where(better, losses.detach(), best_losses)
                best_x = torch.where(better, x.detach(), best_x)
                best_iteration = torch.where(better, iteration, best_iteration)
            done = iteration
            snapshot = params.is_snapshot(iteration)
            reported = report_every and (iteration % report_every == 0 or iteration == params.iterations)
            if on_progress is not None and (snapshot or reported):
                now = time.perf_counter()
                rate = (iteration - last_report) / max(now - last_time, 1e-9)
                last_time, last_report = now, iteration
                shown = average.get() if average is not None else x
                # Copied now (x changes at the step), read whenever the caller reads it.
                handed = copy_to_host(losses, shown) if snapshot or copy_image else copy_to_host(losses)
                on_progress(
                    Progress(
                        iteration=iteration,
                        total=params.iterations,
                        elapsed=now - start,
                        iterations_per_second=rate,
                        is_snapshot=snapshot,
                        stage=index + 1,
                        stages=len(stages),
                        stage_size=stage.size,
                        _copy=handed,  # a CUDA graph reuses its output buffer: copied, not referenced
                        _render=render,
                    )
                )
            take_step(optimizer, losses[0])
            if average is not None:
                average.update(x)
            if on_checkpoint is not None and checkpoint_every and iteration % checkpoint_every == 0:
                on_checkpoint(
                    Checkpoint.capture(iteration, x, optimizer, best_x, best_losses, best_iteration, seed, average)
                )
        optimizer_state = optimizer.state_dict()
        x = x.detach()
        if stopped:
            break

    ran = done > 0
    result_losses = Losses.from_tensor(best_losses) if ran else None
    result_x = best_x if best_x is not None else x
    result_iteration = int(best_iteration.item())
    if average is not None:
        # The averaged image is the result (crowsonkb returns it), scored here once: the loop
        # only ever measured the images it stepped from.
        result_x, result_iteration = average.get(), done
        if ran:
            if targets is None:  # resumed at the very end: the last stage's targets
                targets = compute_targets(extractor, params, *stage_inputs(stages[-1]), blend)
            result_losses = Losses.from_tensor(score(extractor, params, options, result_x, targets, layout))
    return StyleResult(
        image=render(result_x),
        losses=result_losses,
        best_iteration=result_iteration,
        iterations_run=done,
        stopped=stopped,
        seed=seed,
        weights=source.label,
        device=str(run_device),
        working_size=size,
        elapsed=time.perf_counter() - start,
        checkpointing=checkpointing,
        stage_sizes=[stage.size for stage in stages],
    )


@torch.no_grad()
def score(
    extractor: VGGFeatures,
    params: StyleParams,
    options: EngineOptions,
    x: torch.Tensor,
    targets: Targets,
    layout: torch.memory_format,
) -> torch.Tensor:
    """The loss terms of one image, eagerly (a compiled graph is recorded for the training step)."""
    objective = LossFunction(extractor, params, bf16=options.precision == "bf16")
    return objective(x.contiguous(memory_format=layout), *targets).float()


def upsample(x: torch.Tensor, size: Size) -> torch.Tensor:
    """The image at the next stage's size (bicubic, as crowsonkb's schedule does)."""
    return F.interpolate(x.detach().float(), size=size, mode="bicubic", align_corners=False)


def initial_image(params: StyleParams, content: torch.Tensor, style: torch.Tensor, seed: int) -> torch.Tensor:
    """The starting image in seed space; noise is drawn on the CPU so a seed means one image."""
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(content.shape)
    noise = torch.randint(-NOISE_RANGE, NOISE_RANGE + 1, shape, generator=generator).float()
    if params.init == "content":
        return content.detach().clone()
    if params.init == "style":
        # The first style image at the working size.
        return torch.nn.functional.interpolate(style.detach(), size=shape[2:], mode="bicubic", align_corners=False)
    if params.init == "noise":
        return noise.to(content.device)
    return params.noise_ratio * noise.to(content.device) + (1.0 - params.noise_ratio) * content.detach()
