"""The optimisation loop of Gatys et al. as the seed runs it: Adam on the pixels of one image."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from PIL import Image

from core.checkpoint import Checkpoint
from core.decode import Size, image_size, to_rgb
from core.device import resolve_device
from core.engine import EngineOptions, loss_function, mark_iteration
from core.images import from_seed_space, style_size, to_seed_space, transfer_luminance, working_size
from core.objective import LOSS_TERMS, compute_targets
from core.params import StyleParams
from core.vgg import vgg_extractor
from core.weights import WeightsSource

log = logging.getLogger(__name__)

# MATLAB adamupdate's defaults, which the seed uses.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
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

    The losses stay on the device until read: a caller that skips a report (the worker writes
    progress at most twice a second) makes the loop wait for nothing.
    """

    iteration: int
    total: int
    elapsed: float
    iterations_per_second: float
    is_snapshot: bool
    _loss_values: torch.Tensor = field(repr=False, compare=False)
    _render: Callable[[], Image.Image] = field(repr=False, compare=False)

    @cached_property
    def losses(self) -> Losses:
        """The loss terms of this iteration (reading them waits for the device)."""
        return Losses.from_tensor(self._loss_values)

    def image(self) -> Image.Image:
        """The image whose losses these are, at the content's original size (made on demand)."""
        return self._render()

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
) -> StyleResult:
    """Optimise an image with `content`'s content and `styles`' style.

    `on_progress` is called at iteration 1 and every `params.snapshot_every` iterations (and,
    with `report_every`, that often and at the last iteration too, `is_snapshot` telling which);
    `should_stop` is asked before every iteration and ends the run cleanly with the best image so far.
    `on_checkpoint` receives the whole state every `checkpoint_every` iterations; `resume`
    continues from such a checkpoint as if the run had never stopped.
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
    content_x = to_seed_space(content, size).to(run_device)
    style_xs = [to_seed_space(s, style_size(image_size(s), size, params)).to(run_device) for s in styles]

    options = EngineOptions.for_device(run_device)
    layout = options.memory_format
    content_x = content_x.contiguous(memory_format=layout)
    style_xs = [s.contiguous(memory_format=layout) for s in style_xs]
    extractor = vgg_extractor(
        [*params.content_layers, *params.style_layers],
        pooling=params.pooling,
        source=source,
        device=run_device,
        channels_last=options.channels_last,
    )
    targets = compute_targets(extractor, params, content_x, style_xs, blend)
    loss = loss_function(extractor, params, options)
    if resume is not None:
        if tuple(resume.image.shape[2:]) != size:
            raise ValueError(f"the checkpoint is {tuple(resume.image.shape[2:])}, the job works at {size}")
        seed = resume.seed
        start_image = resume.image
    else:
        start_image = initial_image(params, content_x, style_xs[0], seed)
    x = start_image.to(run_device).contiguous(memory_format=layout).requires_grad_(True)
    optimizer = torch.optim.Adam(
        [x], lr=params.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, fused=run_device.type == "cuda"
    )

    def render(pixels: torch.Tensor) -> Image.Image:
        image = from_seed_space(pixels, original)
        return transfer_luminance(image, content) if params.preserve_colors else image

    # The best image is tracked on the device, so the loop never waits for the GPU to learn
    # whether a loss fell; only reports read numbers back.
    best_x = x.detach().clone()
    best_losses = torch.full((len(LOSS_TERMS),), math.inf, device=run_device)
    best_iteration = torch.zeros((), dtype=torch.long, device=run_device)
    iterations_run = 0
    if resume is not None:
        optimizer.load_state_dict(resume.optimizer_state)
        best_x = resume.best_image.to(run_device)
        best_losses = resume.best_losses.to(run_device)
        best_iteration = torch.tensor(resume.best_iteration, device=run_device)
        iterations_run = resume.iteration

    start = last_time = time.perf_counter()
    last_iteration = iterations_run
    stopped = False
    for iteration in range(iterations_run + 1, params.iterations + 1):
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
        iterations_run = iteration
        snapshot = params.is_snapshot(iteration)
        reported = report_every and (iteration % report_every == 0 or iteration == params.iterations)
        if on_progress is not None and (snapshot or reported):
            now = time.perf_counter()
            rate = (iteration - last_iteration) / max(now - last_time, 1e-9)
            last_time, last_iteration = now, iteration
            frozen = x.detach().clone()
            on_progress(
                Progress(
                    iteration=iteration,
                    total=params.iterations,
                    _loss_values=losses.detach().clone(),  # a CUDA graph reuses its output buffer
                    elapsed=now - start,
                    iterations_per_second=rate,
                    is_snapshot=snapshot,
                    _render=lambda pixels=frozen: render(pixels),
                )
            )
        optimizer.step()
        if on_checkpoint is not None and checkpoint_every and iteration % checkpoint_every == 0:
            on_checkpoint(Checkpoint.capture(iteration, x, optimizer, best_x, best_losses, best_iteration, seed))

    ran = iterations_run > 0
    return StyleResult(
        image=render(best_x),
        losses=Losses.from_tensor(best_losses) if ran else None,
        best_iteration=int(best_iteration.item()),
        iterations_run=iterations_run,
        stopped=stopped,
        seed=seed,
        weights=source.label,
        device=str(run_device),
        working_size=size,
        elapsed=time.perf_counter() - start,
    )


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
