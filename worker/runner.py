"""One job from start to end: inputs from Redis, core.stylize, progress and images back to Redis.

Exactly once: a run claims the job (queued -> running) with a random run token and a lease that
the worker's heartbeat renews. If the worker dies, the lease lapses and any worker's reaper
queues the job again; the next run resumes from the last checkpoint. A run that finds the job
claimed by another token stops without writing anything, and only the holder may finish it.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TypeVar

import redis
import torch

from core.checkpoint import Checkpoint
from core.decode import image_size, open_image
from core.errors import StyleError
from core.logs import job_context
from core.memory import DeviceType, JobTooBig, MemoryEstimate, Precision, default_budget, fit_job
from core.output import encode_image
from core.params import StyleParams
from core.transfer import Progress, StyleResult, stylize
from core.weights import WeightsSource
from jobs.problems import problem_body
from jobs.record import JobRecord, history_line
from jobs.settings import Settings, get_settings
from jobs.store import JobStore
from jobs.webhooks import announce
from jobs.workers import worker_name
from worker.progress_writer import OrderedWriter

log = logging.getLogger(__name__)

CHECK_SECONDS = 0.2  # a running job sees a cancel (or losing its claim) within this
PROGRESS_WRITE_SECONDS = 0.5  # between snapshots, progress is written at most this often
FINAL_WRITE_SECONDS = 120  # how long the final write waits for Redis to come back
JPEG_QUALITY = 88
# A test hook: seconds the progress writer sleeps before each write (a slow Redis, a big image).
WRITE_DELAY_ENV = "NST_TEST_WRITE_DELAY_SECONDS"
T = TypeVar("T")


@dataclass(frozen=True)
class DeviceProfile:
    """What a worker can run, as its heartbeat reports it and the API's admission reads it."""

    device: str
    device_type: DeviceType
    precision: Precision
    memory_budget_bytes: int

    def report(self) -> dict[str, object]:
        return {
            "device": self.device,
            "device_type": self.device_type,
            "precision": self.precision,
            "memory_budget_bytes": self.memory_budget_bytes,
        }


def measure_profile(settings: Settings) -> DeviceProfile:
    """The device and its budget: NST_MEMORY_BUDGET_BYTES, or 85% of what is free now (so it
    is measured once, after the network is loaded and before any job holds memory)."""
    from core.device import resolve_device
    from core.engine import EngineOptions

    device = resolve_device(settings.device)
    budget = settings.memory_budget_bytes or default_budget(str(device))
    precision = EngineOptions.for_device(device).precision
    return DeviceProfile(str(device), "cuda" if device.type == "cuda" else "cpu", precision, budget)


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    name: str
    # (job id, run token) of the job this process runs now; the heartbeat renews its lease.
    current: tuple[str, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    _profile: DeviceProfile | None = None
    # The latest rate a job of this process reported (set on the loop's thread, read by the heartbeat's).
    last_iterations_per_second: float | None = None

    def profile(self) -> DeviceProfile:
        with self.lock:
            if self._profile is None:
                self._profile = measure_profile(self.settings)
            return self._profile

    def report(self) -> dict[str, object]:
        """What the heartbeat says: the profile and, once a job has run, its latest iterations per second."""
        report = self.profile().report()
        if self.last_iterations_per_second is not None:
            report["iterations_per_second"] = self.last_iterations_per_second
        return report


@lru_cache(maxsize=1)
def worker_context() -> WorkerContext:
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    return WorkerContext(settings, store, worker_name(socket.gethostname(), os.getpid()))


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA says OutOfMemoryError; the CPU allocator says RuntimeError "can't allocate memory"."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity (a diverged optimisation produces them): null instead."""
    return value if value is not None and math.isfinite(value) else None


def finite_values(values: dict[str, float]) -> dict[str, float | None]:
    return {name: finite_or_none(value) for name, value in values.items()}


def best_effort(what: str, action: Callable[[], T]) -> T | None:
    """Progress writes must not kill a job while Redis restarts: log and go on."""
    try:
        return action()
    except redis.RedisError as exc:
        log.warning("%s skipped, Redis unavailable: %s", what, exc)
        return None


def until_redis_answers(what: str, action: Callable[[], T]) -> T:
    """The final writes wait for Redis (a restart) rather than lose a finished job."""
    deadline = time.monotonic() + FINAL_WRITE_SECONDS
    delay = 0.2
    while True:
        try:
            return action()
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s: Redis unavailable (%s); retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class StopCheck:
    """`should_stop` for core: a cancel, losing the claim, or the time limit. Redis is read at
    most every 0.2 s, in one round trip."""

    def __init__(self, store: JobStore, job_id: str, run_token: str, timeout_seconds: float) -> None:
        self.store = store
        self.job_id = job_id
        self.run_token = run_token
        self.deadline = time.monotonic() + timeout_seconds
        self.next_check = 0.0
        self.canceled = False
        self.superseded = False
        self.timed_out = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            self.timed_out = True
            return True
        if now >= self.next_check:
            self.next_check = now + CHECK_SECONDS
            state = best_effort("cancel check", lambda: self.store.run_state(self.job_id))
            if state is not None:
                status, token, canceled = state
                self.superseded = status != "running" or token != self.run_token
                self.canceled = canceled
        return self.canceled or self.superseded


class ProgressPublisher:
    """`on_progress` for core: snapshots as JPEGs, progress, losses and ETA, into Redis with an
    event each and a line of loss history. What clients see never goes backwards, also when a
    resumed run repeats iterations.

    The loop's thread only decides whether a report is written and hands it over; a writer thread
    (worker.progress_writer) renders, encodes and stores it, in order. `close` waits for it."""

    def __init__(
        self,
        store: JobStore,
        record: JobRecord,
        weights: str,
        run_token: str,
        memory: MemoryEstimate,
        *,
        snapshot_max_side: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.job_id = record.id
        self.run_token = run_token
        self.total = record.total
        self.snapshots = sorted(record.snapshots)
        self.shown_iteration = record.iteration
        self.weights = weights
        self.snapshot_max_side = snapshot_max_side
        self.stop = stop
        self.last_handed = 0.0
        self.write_delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
        self.writer = OrderedWriter(self.write, name=f"nst-progress-{record.id[:8]}")

    def __call__(self, progress: Progress) -> None:
        """On the loop's thread: at most a queue put."""
        now = time.monotonic()
        last = progress.iteration >= self.total  # the history and the watchers get the last point too
        if not progress.is_snapshot and not last and now - self.last_handed < PROGRESS_WRITE_SECONDS:
            return  # nothing read: the loop runs on
        self.last_handed = now
        self.writer.submit(progress, abandon=self.stop)

    def close(self, drain: bool) -> None:
        """Every report handed over is stored (`drain`), or those not yet begun are dropped."""
        self.writer.close(drain)

    def write(self, progress: Progress) -> None:
        """On the writer's thread, one report at a time in iteration order."""
        if self.write_delay:
            time.sleep(self.write_delay)  # the tests' slow writer
        advanced = progress.iteration > self.shown_iteration
        self.shown_iteration = max(self.shown_iteration, progress.iteration)
        losses = finite_values(progress.losses.public())
        fields: dict[str, object] = {
            "iteration": self.shown_iteration,
            "losses": losses,
            "iterations_per_second": finite_or_none(progress.iterations_per_second),
            "eta_seconds": finite_or_none(progress.eta_seconds),
            "scale": {
                "index": progress.stage,
                "count": progress.stages,
                "height": progress.stage_size[0],
                "width": progress.stage_size[1],
            },
            "checkpointing": self.memory.checkpointing,
            "memory_bytes": self.memory.bytes,
        }
        event = {**fields, "total": self.total}
        # A resumed run repeats iterations: the history keeps only the first run's point for each
        # (and no point of a run that diverged: a chart has no place for NaN).
        diverged = None in losses.values()
        history = history_line(progress.iteration, progress.losses.public()) if advanced and not diverged else None
        snapshot = None
        if progress.is_snapshot:
            metadata = {
                "weights": self.weights,
                "iteration": str(progress.iteration),
                "checkpointing": str(self.memory.checkpointing).lower(),
            }
            image = progress.image(self.snapshot_max_side)
            snapshot = (progress.iteration, encode_image(image, "JPEG", metadata, JPEG_QUALITY))
            if progress.iteration not in self.snapshots:
                self.snapshots = sorted([*self.snapshots, progress.iteration])
            fields["snapshots"] = self.snapshots
        written = best_effort(
            "progress",
            lambda: self.store.publish(self.job_id, self.run_token, fields, event, snapshot=snapshot, history=history),
        )  # False when this run no longer holds the job: its StopCheck ends it within CHECK_SECONDS
        if snapshot is not None and written:
            announce(self.store, self.job_id, "snapshot")  # at most one per NST_WEBHOOK_SNAPSHOT_INTERVAL_SECONDS


def run_job(job_id: str, context: WorkerContext | None = None) -> None:
    """Take one turn: claim the next queued job in fair order between tenants (jobs/fair_queue.py)
    and run it to its end. `job_id` names the submission whose message this turn is; that job
    may run now or on another turn. A turn that finds nothing queued ends at once."""
    context = context or worker_context()
    store, settings = context.store, context.settings
    weights = WeightsSource.from_env()
    token = secrets.token_hex(8)
    fields = {"status": "running", "weights": weights.label, "worker": context.name}
    claimed = until_redis_answers("claiming a job", lambda: store.claim_next(fields, token, settings.lease_seconds))
    if claimed is None:
        # Nothing in the tenants' queues. A job queued by an earlier version's API is in none of
        # them (until a worker starts and adopts it): its own message runs it.
        took, _ = until_redis_answers(
            "claiming the job", lambda: store.claim(job_id, fields, token, settings.lease_seconds)
        )
        if not took:
            log.info("turn of job %s: nothing is queued (canceled, or taken on another turn)", job_id)
            return
        claimed = (job_id, 0)
    with job_context(claimed[0]):  # every record logged meanwhile carries the job id
        _run_job(context, claimed[0], weights, token)


def _run_job(context: WorkerContext, job_id: str, weights: WeightsSource, token: str) -> None:
    store, settings = context.store, context.settings
    record = until_redis_answers("reading the job", lambda: store.get(job_id))
    if record is None:
        log.warning("job %s: its record expired as it started", job_id)
        return
    with context.lock:
        context.current = (job_id, token)
    log.info("job %s: started (attempt %d)", job_id, record.attempts)
    announce(store, job_id, "started", settings=settings)  # once a job: a resumed run sends none
    try:
        _run_claimed(context, record, weights, token)
    finally:
        with context.lock:
            context.current = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    announce(store, job_id, "completed", settings=settings)  # if the job is final now (once a job)


def _run_claimed(context: WorkerContext, record: JobRecord, weights: WeightsSource, token: str) -> None:
    store = context.store
    job_id = record.id
    stop = StopCheck(store, job_id, token, context.settings.job_timeout_seconds)

    def fail(kind: str, detail: str) -> None:
        until_redis_answers(
            "recording the failure",
            lambda: store.finish(job_id, "failed", {"error": problem_body(kind, detail)}, token),
        )

    try:
        result = _optimise(context, record, weights, stop)
    except JobTooBig as exc:
        fail("too-much-memory", str(exc))
        log.warning("job %s refused: %s", job_id, exc)
        return
    except (StyleError, ValueError) as exc:
        fail("invalid-job", str(exc))
        log.warning("job %s failed: %s", job_id, exc)
        return
    except Exception as exc:
        if is_out_of_memory(exc):
            fail("out-of-memory", "the device ran out of memory; try a smaller height and width")
            log.warning("job %s: out of memory", job_id)
            return
        log.exception("job %s: unexpected error", job_id)
        fail("job-failed", f"internal error: {type(exc).__name__}")
        return
    _record_outcome(store, job_id, result, stop, token)


def _optimise(context: WorkerContext, record: JobRecord, weights: WeightsSource, stop: StopCheck) -> StyleResult:
    store = context.store
    inputs = until_redis_answers("reading the inputs", lambda: store.inputs(record.id, record.style_count))
    if inputs is None:
        raise StyleError("the job's input images have expired")
    content_bytes, style_bytes = inputs
    params = StyleParams.model_validate(record.params)
    content = open_image(content_bytes)
    styles = [open_image(data) for data in style_bytes]
    memory = memory_plan(context.profile(), params, image_size(content))
    resume = None
    saved = until_redis_answers("reading the checkpoint", lambda: store.checkpoint(record.id))
    if saved is not None:
        try:
            resume = Checkpoint.from_bytes(saved)
        except Exception as exc:  # written by another version, or damaged: the job starts over
            log.warning("job %s: its checkpoint cannot be read (%s); starting from the beginning", record.id, exc)
        else:
            log.info("job %s: resuming from the checkpoint at iteration %d", record.id, resume.iteration)

    def save(checkpoint: Checkpoint) -> None:
        data = checkpoint.to_bytes()
        best_effort("checkpoint", lambda: store.save_checkpoint(record.id, data))

    publisher = ProgressPublisher(
        store, record, weights.label, stop.run_token, memory,
        snapshot_max_side=context.settings.snapshot_max_side, stop=stop,
    )  # fmt: skip

    def on_progress(progress: Progress) -> None:
        rate = finite_or_none(progress.iterations_per_second)
        if rate is not None:
            context.last_iterations_per_second = rate
        publisher(progress)

    try:
        result = stylize(
            content,
            styles,
            params,
            device=context.settings.device,
            weights=weights,
            on_progress=on_progress,
            should_stop=stop,
            report_every=max(1, params.snapshot_every // 5),
            checkpoint_every=context.settings.checkpoint_every,
            on_checkpoint=save,
            resume=resume,
            checkpointing=memory.checkpointing,
        )
    except BaseException:
        publisher.close(drain=False)
        raise
    # A finished run's snapshots are all stored before it is marked succeeded; a stopped run's
    # waiting ones are dropped (the write under way completes: nothing is left half-written).
    publisher.close(drain=not result.stopped)
    return result


def memory_plan(profile: DeviceProfile, params: StyleParams, original: tuple[int, int]) -> MemoryEstimate:
    """How the job fits this worker's budget (checkpointing if it must); JobTooBig if it cannot.

    A job the API admitted can still land here: it was queued before this worker started, or
    the worker that could hold it has gone."""
    return fit_job(
        params, original, profile.memory_budget_bytes, device_type=profile.device_type,
        precision=profile.precision, whose="this worker's memory budget",
    )  # fmt: skip


def _record_outcome(store: JobStore, job_id: str, result: StyleResult, stop: StopCheck, token: str) -> None:
    losses = finite_values(result.losses.public()) if result.losses is not None else None
    if stop.superseded and not stop.canceled:
        log.warning("job %s: another run holds it now; this run stops without writing", job_id)
        return
    if stop.timed_out:
        detail = f"the job ran past the time limit and was stopped at iteration {result.iterations_run}"
        error = problem_body("timeout", detail)
        until_redis_answers("timing out", lambda: store.finish(job_id, "failed", {"error": error}, token))
        log.warning("job %s: timed out", job_id)
        return
    if result.stopped:
        until_redis_answers("canceling", lambda: store.finish(job_id, "canceled", {"eta_seconds": None}, token))
        log.info("job %s: canceled at iteration %d", job_id, result.iterations_run)
        return
    if result.losses is None or not math.isfinite(result.losses.total):
        detail = (
            f"every loss of the {result.iterations_run} iterations was infinite or not a number: the weights are "
            "too large (content_weight, style_weight, tv_weight or a layer weight)"
        )
        error = problem_body("diverged", detail)
        until_redis_answers("recording the divergence", lambda: store.finish(job_id, "failed", {"error": error}, token))
        log.warning("job %s: diverged", job_id)
        return
    metadata = {
        "weights": result.weights,
        "seed": str(result.seed),
        "best_iteration": str(result.best_iteration),
        "checkpointing": str(result.checkpointing).lower(),
    }
    png = encode_image(result.image, "PNG", metadata)
    fields = {
        "iteration": result.iterations_run,
        "losses": losses,
        "eta_seconds": 0.0,
        "checkpointing": result.checkpointing,
    }
    if until_redis_answers("storing the result", lambda: store.finish(job_id, "succeeded", fields, token, png)):
        log.info("job %s: succeeded in %.1f s", job_id, result.elapsed)
    else:
        log.warning("job %s: finished, but another run held it; result dropped", job_id)
