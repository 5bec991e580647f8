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
from core.engine import EngineOptions, LossCall, loss_function, mark_iteration
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
        """The terms the service reports (docs/api.md)."""
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
    hooks = _Hooks(on_progress, should_stop, report_every, copy_image, on_checkpoint, checkpoint_every)
    job = _prepare(content, styles, params, device, weights, checkpointing, hooks)
    state = _State.resumed(job, resume) if resume is not None else _State.fresh(job.seed, job.device)
    clock = _Clock.started(state.done)
    for index, stage in enumerate(job.stages):
        if stage.last <= state.done:
            continue  # run before the checkpoint resumed from
        _run_stage(job, state, clock, _enter_stage(job, state, index, stage))
        if state.stopped:
            break
    return _result(job, state, clock)


@dataclass(frozen=True)
class _Hooks:
    """The caller's side of a run: reports, stopping and checkpoints, and how often."""

    on_progress: ProgressCallback | None
    should_stop: StopCheck | None
    report_every: int | None
    copy_image: bool
    on_checkpoint: CheckpointCallback | None
    checkpoint_every: int | None

    def stop_requested(self) -> bool:
        return self.should_stop is not None and self.should_stop()

    def report_due(self, iteration: int, iterations: int) -> bool:
        """With `report_every`: that often, and at the last iteration (snapshots come besides)."""
        every = self.report_every
        return bool(every and (iteration % every == 0 or iteration == iterations))

    def checkpoint_due(self, iteration: int) -> bool:
        every = self.checkpoint_every
        return bool(every and iteration % every == 0)


@dataclass(frozen=True)
class _Render:
    """Pixels in seed space to a picture at the content's size (or within `max_side`): all that
    a report keeps of its run."""

    content: Image.Image
    original: Size
    preserve_colors: bool

    def __call__(self, pixels: torch.Tensor, max_side: int | None = None) -> Image.Image:
        image = from_seed_space(pixels, fit_within(self.original, max_side))
        return transfer_luminance(image, self.content) if self.preserve_colors else image


@dataclass(frozen=True)
class _Job:
    """What a run fixes before its first iteration: the images, the stages, the network and loss."""

    params: StyleParams
    content: Image.Image  # RGB, at its original size
    styles: list[Image.Image]  # RGB
    blend: list[float]  # the styles' mixing weights
    device: torch.device
    source: WeightsSource
    seed: int  # a fresh run's; a resumed run takes its checkpoint's
    size: Size  # the working size of the last stage
    stages: list[Stage]
    options: EngineOptions
    x_layout: torch.memory_format  # the optimised image's (L-BFGS wants it contiguous)
    extractor: VGGFeatures
    loss: LossCall
    checkpointing: bool
    hooks: _Hooks
    render: _Render  # the result's image and the reports' from seed-space pixels

    @property
    def layout(self) -> torch.memory_format:
        return self.options.memory_format

    def stage_inputs(self, stage: Stage) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The content and (colour-matched) style images at a stage's size, in seed space."""
        params, layout = self.params, self.layout
        content_x = to_seed_space(self.content, stage.size).to(self.device).contiguous(memory_format=layout)
        style_xs = [
            to_seed_space(s, style_size(image_size(s), stage.size, params)).to(self.device) for s in self.styles
        ]
        style_xs = [match_seed_space(s, content_x, params.color_match) for s in style_xs]
        return content_x, [s.contiguous(memory_format=layout) for s in style_xs]


def _prepare(
    content: Image.Image,
    styles: Sequence[Image.Image],
    params: StyleParams,
    device: str | torch.device | None,
    weights: WeightsSource | None,
    checkpointing: bool,
    hooks: _Hooks,
) -> _Job:
    """Checks the inputs, plans the stages and builds the network and loss function."""
    if not styles:
        raise ValueError("at least one style image is needed")
    blend = params.blend_weights(len(styles))
    run_device = resolve_device(device)
    source = weights or WeightsSource.from_env()
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
    content = to_rgb(content)
    rgb_styles = [to_rgb(s) for s in styles]
    original = image_size(content)
    size = working_size(original, params)
    stages = plan_stages(params, size)
    options = EngineOptions.for_device(run_device)
    x_layout = image_layout(params, options.memory_format)
    extractor = vgg_extractor(
        [*params.content_layers, *params.style_layers],
        pooling=params.pooling,
        source=source,
        device=run_device,
        channels_last=options.channels_last,
        checkpointing=checkpointing,
    )
    loss = loss_function(extractor, params, options)
    return _Job(
        params=params,
        content=content,
        styles=rgb_styles,
        blend=blend,
        device=run_device,
        source=source,
        seed=seed,
        size=size,
        stages=stages,
        options=options,
        x_layout=x_layout,
        extractor=extractor,
        loss=loss,
        checkpointing=checkpointing,
        hooks=hooks,
        render=_Render(content, original, params.preserve_colors),
    )


@dataclass
class _State:
    """What carries from one iteration, and one stage, to the next: what a checkpoint holds, and
    what the result is made of."""

    seed: int
    # The best image is tracked on the device, so the loop never waits for the GPU to learn
    # whether a loss fell; only reports read numbers back.
    best_losses: torch.Tensor  # inf until the stage's first iteration
    best_iteration: torch.Tensor  # 0: the initial image
    best_x: torch.Tensor | None = None
    done: int = 0  # iterations completed
    x: torch.Tensor | None = None  # the image; during a stage, the leaf being optimised
    optimizer_state: dict[str, Any] | None = None  # handed from stage to stage, or from a checkpoint
    average: ImageAverage | None = None
    targets: Targets | None = None  # the last stage entered's
    stopped: bool = False

    @classmethod
    def fresh(cls, seed: int, device: torch.device) -> _State:
        best_losses, best_iteration = _no_best(device)
        return cls(seed, best_losses, best_iteration)

    @classmethod
    def resumed(cls, job: _Job, resume: Checkpoint) -> _State:
        expected = job.stages[stage_of(job.stages, resume.iteration)].size
        if tuple(resume.image.shape[2:]) != expected:
            raise ValueError(f"the checkpoint is {tuple(resume.image.shape[2:])}, the job works at {expected}")
        best_x = resume.best_image.to(job.device)
        best_losses = resume.best_losses.to(job.device)
        best_iteration = torch.tensor(resume.best_iteration, device=job.device)
        average = None
        if job.params.average is not None and resume.average is not None:
            average = ImageAverage(job.params.average, resume.average.to(job.device), resume.average_count)
        return cls(
            seed=resume.seed,
            best_losses=best_losses,
            best_iteration=best_iteration,
            best_x=best_x,
            done=resume.iteration,
            x=resume.image,
            optimizer_state=resume.optimizer_state,
            average=average,
        )

    def restart_best(self, x: torch.Tensor, device: torch.device) -> None:
        """A stage's best image is its own: its starting image until an iteration beats it."""
        self.best_x = x.detach().clone()
        self.best_losses, self.best_iteration = _no_best(device)

    @torch.no_grad()
    def track_best(self, losses: torch.Tensor, x: torch.Tensor, iteration: int) -> None:
        """Keep `x` if its losses beat the best. It is the image whose loss was measured, before
        the step (not the seed's quirk of storing the image after the update)."""
        assert self.best_x is not None  # set when the stage began
        better = losses[0] < self.best_losses[0]
        self.best_losses = torch.where(better, losses.detach(), self.best_losses)
        self.best_x = torch.where(better, x.detach(), self.best_x)
        self.best_iteration = torch.where(better, iteration, self.best_iteration)


def _no_best(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Best losses and iteration before any iteration has run."""
    return torch.full((len(LOSS_TERMS),), math.inf, device=device), torch.zeros((), dtype=torch.long, device=device)


@dataclass
class _Clock:
    """Time since the loop began, and since the last report, for the reports' rate."""

    start: float
    last_time: float
    last_report: int  # the iteration of the last report, or the one the run began after

    @classmethod
    def started(cls, done: int) -> _Clock:
        now = time.perf_counter()
        return cls(now, now, done)

    def lap(self, iteration: int, now: float) -> float:
        """Iterations a second since the last report, which `iteration`'s becomes."""
        rate = (iteration - self.last_report) / max(now - self.last_time, 1e-9)
        self.last_time, self.last_report = now, iteration
        return rate


@dataclass(frozen=True)
class _StageRun:
    """One stage under way: the image being optimised (a leaf that requires grad), its optimiser
    and the stage's targets."""

    index: int  # from 0
    stage: Stage
    x: torch.Tensor
    optimizer: torch.optim.Optimizer
    targets: Targets


def _enter_stage(job: _Job, state: _State, index: int, stage: Stage) -> _StageRun:
    """The stage's targets, starting image and optimiser; its best image and average restart
    unless it is resumed in its middle."""
    params = job.params
    content_x, style_xs = job.stage_inputs(stage)
    targets = state.targets = compute_targets(job.extractor, params, content_x, style_xs, job.blend)
    starting = state.done < stage.first  # a stage starting now, not one resumed in its middle
    x = state.x
    if x is None:
        x = initial_image(params, content_x, style_xs[0], state.seed)
    else:
        if starting and state.average is not None:
            x = state.average.get()  # crowsonkb: a scale starts from the last one's averaged image
        if tuple(x.shape[2:]) != stage.size:
            x = upsample(x.to(job.device), stage.size)
            state.optimizer_state = carry_state(params, state.optimizer_state, stage.size, job.x_layout)
    del content_x, style_xs  # the targets hold what the stage needs
    x = state.x = x.to(job.device).contiguous(memory_format=job.x_layout).requires_grad_(True)
    optimizer = make_optimizer(params, x)
    if state.optimizer_state is not None:
        optimizer.load_state_dict(state.optimizer_state)
    if starting:
        state.restart_best(x, job.device)
    if params.average is not None and (starting or state.average is None):
        state.average = ImageAverage.start(params.average, x)
    return _StageRun(index, stage, x, optimizer, targets)


def _run_stage(job: _Job, state: _State, clock: _Clock, run: _StageRun) -> None:
    """The stage's iterations from where the state is, until its last or a stop."""
    for iteration in range(state.done + 1, run.stage.last + 1):
        if job.hooks.stop_requested():
            state.stopped = True
            break
        losses = _measure(job, state, run, iteration)
        _report(job, state, clock, run, iteration, losses)
        take_step(run.optimizer, losses[0])
        if state.average is not None:
            state.average.update(run.x)
        _checkpoint(job, state, run, iteration)
    state.optimizer_state = run.optimizer.state_dict()
    state.x = run.x.detach()


def _measure(job: _Job, state: _State, run: _StageRun, iteration: int) -> torch.Tensor:
    """The loss terms of the image as it is, its gradient left in place for the step."""
    mark_iteration(job.options, job.device)
    run.optimizer.zero_grad(set_to_none=True)
    losses = job.loss(run.x, *run.targets)
    torch.autograd.backward(losses[0])  # what Tensor.backward does (that one is unannotated)
    state.track_best(losses, run.x, iteration)
    state.done = iteration
    return losses


def _report(job: _Job, state: _State, clock: _Clock, run: _StageRun, iteration: int, losses: torch.Tensor) -> None:
    """Hand the caller a Progress, if this iteration is one to report."""
    on_progress = job.hooks.on_progress
    snapshot = job.params.is_snapshot(iteration)
    if on_progress is None or not (snapshot or job.hooks.report_due(iteration, job.params.iterations)):
        return
    now = time.perf_counter()
    rate = clock.lap(iteration, now)
    shown = state.average.get() if state.average is not None else run.x
    # Copied now (x changes at the step), read whenever the caller reads it.
    handed = copy_to_host(losses, shown) if snapshot or job.hooks.copy_image else copy_to_host(losses)
    on_progress(
        Progress(
            iteration=iteration,
            total=job.params.iterations,
            elapsed=now - clock.start,
            iterations_per_second=rate,
            is_snapshot=snapshot,
            stage=run.index + 1,
            stages=len(job.stages),
            stage_size=run.stage.size,
            _copy=handed,  # a CUDA graph reuses its output buffer: copied, not referenced
            _render=job.render,
        )
    )


def _checkpoint(job: _Job, state: _State, run: _StageRun, iteration: int) -> None:
    """Hand the caller the whole state after `iteration`'s step, if one is due."""
    on_checkpoint = job.hooks.on_checkpoint
    if on_checkpoint is None or not job.hooks.checkpoint_due(iteration):
        return
    assert state.best_x is not None  # set when the stage began
    on_checkpoint(
        Checkpoint.capture(
            iteration,
            run.x,
            run.optimizer,
            state.best_x,
            state.best_losses,
            state.best_iteration,
            state.seed,
            state.average,
        )
    )


def _result(job: _Job, state: _State, clock: _Clock) -> StyleResult:
    """The best image (with `average`, the average) and what made it."""
    ran = state.done > 0
    result_losses = Losses.from_tensor(state.best_losses) if ran else None
    result_x = state.best_x if state.best_x is not None else state.x
    result_iteration = int(state.best_iteration.item())
    if state.average is not None:
        # The averaged image is the result (crowsonkb returns it), scored here once: the loop
        # only ever measured the images it stepped from.
        result_x, result_iteration = state.average.get(), state.done
        if ran:
            targets = state.targets
            if targets is None:  # resumed at the very end: the last stage's targets
                targets = compute_targets(job.extractor, job.params, *job.stage_inputs(job.stages[-1]), job.blend)
            scored = score(job.extractor, job.params, job.options, result_x, targets, job.layout)
            result_losses = Losses.from_tensor(scored)
    assert result_x is not None  # a run has an image: its initial one at least
    return StyleResult(
        image=job.render(result_x),
        losses=result_losses,
        best_iteration=result_iteration,
        iterations_run=state.done,
        stopped=state.stopped,
        seed=state.seed,
        weights=job.source.label,
        device=str(job.device),
        working_size=job.size,
        elapsed=time.perf_counter() - clock.start,
        checkpointing=job.checkpointing,
        stage_sizes=[stage.size for stage in job.stages],
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
    terms: torch.Tensor = objective(x.contiguous(memory_format=layout), *targets)  # Module.__call__ returns Any
    return terms.float()


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
