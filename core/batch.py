"""Continuous batching: several jobs optimised together, one network pass an iteration for all.

Each job (a `BatchMember`) keeps everything `stylize` gives a job alone: its own image, Adam
state, targets, best image, average, seed, iteration count, reports every `snapshot_every` of
its own iterations, checkpoints, stop check and result. `BatchedRun.step` runs one iteration of
every member: the images are concatenated, pass through the network once, and each image's loss
terms come from its slice of the feature maps with its own targets and weights; the backward of
their sum gives each image the gradient of its own loss (the network treats a batch's images
apart). A member may join between any two steps and leaves when it finishes or stops; the others
go on. Which jobs may share a batch: core.batching.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from core.batching import batch_key
from core.checkpoint import Checkpoint
from core.decode import image_size, to_rgb
from core.device import is_out_of_memory
from core.engine import BatchLossCall, batch_loss_function, mark_iteration
from core.logs import job_context
from core.optimizers import take_step
from core.params import StyleParams

# The single-job loop's parts, shared so that a job in a batch runs as it would alone.
from core.transfer import (
    CheckpointCallback,
    ProgressCallback,
    StopCheck,
    StyleResult,
    _checkpoint,
    _Clock,
    _enter_stage,
    _Hooks,
    _Job,
    _prepare,
    _report,
    _result,
    _StageRun,
    _State,
)
from core.weights import WeightsSource

log = logging.getLogger(__name__)


class CannotBatch(ValueError):
    """The job cannot share a batch (core.batching), or not this one: it runs alone."""


@dataclass(eq=False)  # members are told apart by identity (their tensors do not compare)
class BatchMember:
    """One job of a batched run, ready for its next iteration."""

    name: str  # for logs: the job's id
    key: str  # core.batching.batch_key
    job: _Job
    state: _State
    clock: _Clock
    run: _StageRun
    weights: tuple[float | torch.Tensor, float | torch.Tensor, float | torch.Tensor]  # alpha, beta, tv_weight
    result: StyleResult | None = None  # set when it leaves the batch, unless it failed
    error: Exception | None = None  # why it left without a result: its own hooks failed

    @property
    def done(self) -> int:
        return self.state.done

    @property
    def finished(self) -> bool:
        return self.state.done >= self.run.stage.last


def batch_member(
    content: Image.Image,
    styles: Sequence[Image.Image],
    params: StyleParams | None = None,
    *,
    name: str = "",
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
) -> BatchMember:
    """A job prepared to join a batch: its targets computed, its image and optimiser made (or
    restored from `resume`). The arguments are stylize's. ValueError for a job that cannot
    share a batch (core.batching), or whose checkpoint does not fit it."""
    params = params or StyleParams()
    content = to_rgb(content)
    key = batch_key(params, image_size(content))
    if key is None:
        raise CannotBatch("this job runs alone: L-BFGS and coarse-to-fine jobs cannot share a batch")
    hooks = _Hooks(on_progress, should_stop, report_every, copy_image, on_checkpoint, checkpoint_every)
    job = _prepare(content, styles, params, device, weights, checkpointing, hooks)
    state = _State.resumed(job, resume) if resume is not None else _State.fresh(job.seed, job.device)
    clock = _Clock.started(state.done)
    run = _enter_stage(job, state, 0, job.stages[0])
    return BatchMember(name=name, key=key, job=job, state=state, clock=clock, run=run, weights=_weights(job))


class BatchedRun:
    """The members optimised together now; `step` runs one iteration of each.

    An iteration passes the members through the network in chunks: all at once eagerly; in
    batches of powers of two when compiled (torch.compile keeps a graph per batch size: 1, 2, 4
    and 8 serve every count up to 15). A pass that runs out of memory is retried in chunks half
    as large (nothing has been stepped yet), down to one image; `chunk` keeps the size that fits.
    """

    def __init__(self) -> None:
        self.members: list[BatchMember] = []
        self.chunk: int | None = None  # the most images one pass may hold; None: no limit found
        self._loss: BatchLossCall | None = None

    @property
    def key(self) -> str | None:
        return self.members[0].key if self.members else None

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: BatchMember) -> None:
        """`member` runs from the next step on (CannotBatch if it cannot share this batch)."""
        if self.members:
            first = self.members[0]
            if member.key != first.key or member.job.checkpointing != first.job.checkpointing:
                raise CannotBatch(f"job {member.name} cannot join this batch ({member.key} into {first.key})")
            if member.job.device != first.job.device or member.job.options != first.job.options:
                raise CannotBatch(f"job {member.name} runs on another device or with other options")
        else:
            self._loss = batch_loss_function(member.job.extractor, member.job.params, member.job.options)
        self.members.append(member)

    def step(self) -> list[BatchMember]:
        """One iteration of every member that has one to run; returns the members that left
        (finished, or stopped at their stop check, each with its `result`; or failed in their own
        hooks, with their `error`). Raises what the shared pass raised (out of memory even one
        image at a time): then no member has been stepped."""
        left = [m for m in self.members if m.error is None and (m.finished or self._stop_requested(m))]
        for member in left:
            member.state.stopped = not member.finished
        active = [m for m in self.members if m not in left and m.error is None]
        if active:
            self._iterate(active)
            left.extend(m for m in active if m.error is not None or m.finished)
        for member in left:
            self._finish(member)
        return left

    def _stop_requested(self, member: BatchMember) -> bool:
        with _logged_as(member):
            try:
                return member.job.hooks.stop_requested()
            except Exception as exc:  # its own stop check broke: it alone leaves
                member.error = exc
                return False

    def _iterate(self, active: list[BatchMember]) -> None:
        first = active[0].job
        for member in active:
            member.run.optimizer.zero_grad(set_to_none=True)
        rows = self._losses(active, first)
        for member, row in zip(active, rows, strict=True):
            with _logged_as(member):
                try:
                    self._advance(member, row)
                except Exception as exc:  # its own report or checkpoint broke: it alone leaves
                    log.warning("job %s leaves the batch: %s: %s", member.name, type(exc).__name__, exc)
                    member.error = exc

    def _losses(self, active: list[BatchMember], first: _Job) -> list[torch.Tensor]:
        """Every active member's loss terms, its image's gradient left in place."""
        assert self._loss is not None  # made by the first add
        while True:
            try:
                rows: list[torch.Tensor] = []
                for chunk in _chunks(active, self.chunk, first.options.compile):
                    mark_iteration(first.options, first.device)
                    losses = self._loss(
                        [m.run.x for m in chunk],
                        [m.run.targets[0] for m in chunk],
                        [m.run.targets[1] for m in chunk],
                        [m.weights for m in chunk],
                    )
                    # Each image's loss depends on that image alone: the sum's gradient is each one's own.
                    torch.autograd.backward(losses[:, 0].sum())
                    # Copies: a CUDA graph's next replay (the next chunk of the same size) writes
                    # its outputs, the gradients among them, into the same buffers.
                    rows.extend(losses.detach().clone().unbind(0))
                    if first.options.compile:
                        for member in chunk:
                            grad = member.run.x.grad
                            member.run.x.grad = None if grad is None else grad.clone()
                return rows
            except Exception as exc:
                largest = max(len(c) for c in _chunks(active, self.chunk, first.options.compile))
                if not is_out_of_memory(exc) or largest == 1:
                    raise
                self.chunk = (largest + 1) // 2
                log.warning("a batch of %d ran out of memory; passes of at most %d from now on", largest, self.chunk)
                for member in active:
                    member.run.optimizer.zero_grad(set_to_none=True)
                if first.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _advance(self, member: BatchMember, row: torch.Tensor) -> None:
        """What a lone run does after its loss: keep the best, report, step, checkpoint."""
        job, state, run = member.job, member.state, member.run
        iteration = state.done + 1
        state.track_best(row, run.x, iteration)
        state.done = iteration
        _report(job, state, member.clock, run, iteration, row)
        take_step(run.optimizer, row[0])
        if state.average is not None:
            state.average.update(run.x)
        _checkpoint(job, state, run, iteration)

    def _finish(self, member: BatchMember) -> None:
        self.members.remove(member)
        if member.error is not None:
            return
        state, run = member.state, member.run
        state.optimizer_state = run.optimizer.state_dict()
        state.x = run.x.detach()
        with _logged_as(member):
            try:
                member.result = _result(member.job, state, member.clock)
            except Exception as exc:  # its own result broke (an averaged image's score, say)
                member.error = exc


def _chunks(members: list[BatchMember], chunk: int | None, compiled: bool) -> list[list[BatchMember]]:
    """The passes of one iteration: at most `chunk` images each; powers of two when compiled."""
    limit = chunk or len(members)
    sizes: list[int] = []
    left = len(members)
    while left:
        size = min(limit, left)
        if compiled:
            size = 1 << (size.bit_length() - 1)  # the largest power of two within it
        sizes.append(size)
        left -= size
    passes, start = [], 0
    for size in sizes:
        passes.append(members[start : start + size])
        start += size
    return passes


@contextmanager
def _logged_as(member: BatchMember) -> Iterator[None]:
    """Records logged for a member carry its job's id (core.logs), not the batch's first job's."""
    if not member.name:
        yield
        return
    with job_context(member.name):
        yield


def _weights(job: _Job) -> tuple[float | torch.Tensor, float | torch.Tensor, float | torch.Tensor]:
    """alpha, beta, tv_weight: numbers for the eager pass (as a lone job's), tensors for a compiled
    one (so that another job's weights do not make torch.compile trace the graph again)."""
    params = job.params
    values = (params.content_weight, params.style_weight, params.tv_weight)
    if not job.options.compile:
        return values
    return tuple(torch.tensor(v, dtype=torch.float32, device=job.device) for v in values)  # type: ignore[return-value]
