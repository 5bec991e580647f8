"""One job from start to end: inputs from Redis, core.stylize, progress and images back to Redis."""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from functools import lru_cache

import torch

from core.decode import open_image
from core.errors import StyleError
from core.output import encode_image
from core.params import StyleParams
from core.transfer import Progress, StyleResult, stylize
from core.weights import WeightsSource
from worker.settings import Settings, get_settings
from worker.state import JobRecord, JobStore, utc_now

log = logging.getLogger(__name__)

CANCEL_POLL_SECONDS = 0.2  # a running job stops within a second of its cancel
PROGRESS_WRITE_SECONDS = 0.5  # between snapshots, progress is written at most this often
JPEG_QUALITY = 88


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    name: str


@lru_cache(maxsize=1)
def worker_context() -> WorkerContext:
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    return WorkerContext(settings, store, f"{socket.gethostname()}:{os.getpid()}")


def problem(title: str, detail: str, status: int = 500, kind: str = "job-failed") -> dict[str, object]:
    """An RFC 9457 problem object, as the API's errors are."""
    return {"type": f"/problems/{kind}", "title": title, "status": status, "detail": detail}


class StopCheck:
    """`should_stop` for core: a cancel flag in Redis (read at most every 0.2 s) or the time limit."""

    def __init__(self, store: JobStore, job_id: str, timeout_seconds: float) -> None:
        self.store = store
        self.job_id = job_id
        self.deadline = time.monotonic() + timeout_seconds
        self.next_poll = 0.0
        self.canceled = False
        self.timed_out = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            self.timed_out = True
            return True
        if now >= self.next_poll:
            self.next_poll = now + CANCEL_POLL_SECONDS
            self.canceled = self.store.cancel_requested(self.job_id)
        return self.canceled


class ProgressPublisher:
    """`on_progress` for core: snapshots as JPEGs, progress, losses and ETA, into Redis."""

    def __init__(self, store: JobStore, record: JobRecord, weights: str) -> None:
        self.store = store
        self.job_id = record.id
        self.snapshots = list(record.snapshots)
        self.weights = weights
        self.last_write = 0.0

    def __call__(self, progress: Progress) -> None:
        fields = {
            "iteration": progress.iteration,
            "losses": progress.losses.public(),
            "iterations_per_second": progress.iterations_per_second,
            "eta_seconds": progress.eta_seconds,
        }
        now = time.monotonic()
        if progress.is_snapshot:
            jpeg = encode_image(
                progress.image(), "JPEG", {"weights": self.weights, "iteration": str(progress.iteration)}, JPEG_QUALITY
            )
            if progress.iteration not in self.snapshots:
                self.snapshots.append(progress.iteration)
            self.store.add_snapshot(self.job_id, progress.iteration, jpeg, {**fields, "snapshots": self.snapshots})
            self.last_write = now
        elif now - self.last_write >= PROGRESS_WRITE_SECONDS:
            self.store.update(self.job_id, fields)
            self.last_write = now


def run_job(job_id: str, context: WorkerContext | None = None) -> None:
    """Run one job to its end. Safe to call twice for one job: a finished or canceled job is
    left alone, so a redelivered message does nothing."""
    context = context or worker_context()
    store = context.store
    record = store.get(job_id)
    if record is None:
        log.warning("job %s: no record (expired or never created); message dropped", job_id)
        return
    weights = WeightsSource.from_env()
    applied, status = store.transition(
        job_id,
        ["queued", "running"],
        {
            "status": "running",
            "started_at": record.started_at or utc_now(),
            "attempts": record.attempts + 1,
            "weights": weights.label,
            "worker": context.name,
        },
    )
    store.dequeue(job_id)
    if not applied:
        log.info("job %s is %s: not started", job_id, status)
        return
    log.info("job %s: started (attempt %d)", job_id, record.attempts + 1)
    stop = StopCheck(store, job_id, context.settings.job_timeout_seconds)
    try:
        result = _optimise(store, record, weights, stop, context.settings.device)
    except (StyleError, ValueError) as exc:
        store.finish(job_id, "failed", {"error": problem("Job failed", str(exc), 422, "invalid-job")})
        log.warning("job %s failed: %s", job_id, exc)
        return
    except (torch.cuda.OutOfMemoryError, MemoryError):
        detail = "the device ran out of memory; try a smaller height and width"
        store.finish(job_id, "failed", {"error": problem("Out of memory", detail, 507, "out-of-memory")})
        log.warning("job %s: out of memory", job_id)
        return
    except Exception as exc:
        log.exception("job %s: unexpected error", job_id)
        store.finish(job_id, "failed", {"error": problem("Job failed", f"internal error: {type(exc).__name__}")})
        return
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    _record_outcome(store, job_id, result, stop)


def _optimise(
    store: JobStore, record: JobRecord, weights: WeightsSource, stop: StopCheck, device: str | None
) -> StyleResult:
    inputs = store.inputs(record.id, record.style_count)
    if inputs is None:
        raise StyleError("the job's input images have expired")
    content_bytes, style_bytes = inputs
    params = StyleParams.model_validate(record.params)
    return stylize(
        open_image(content_bytes),
        [open_image(data) for data in style_bytes],
        params,
        device=device,
        weights=weights,
        on_progress=ProgressPublisher(store, record, weights.label),
        should_stop=stop,
        report_every=max(1, params.snapshot_every // 5),
    )


def _record_outcome(store: JobStore, job_id: str, result: StyleResult, stop: StopCheck) -> None:
    losses = result.losses.public() if result.losses is not None else None
    if stop.timed_out:
        detail = f"the job ran past the time limit and was stopped at iteration {result.iterations_run}"
        store.finish(job_id, "failed", {"error": problem("Job timed out", detail, 504, "timeout"), "losses": losses})
        log.warning("job %s: timed out", job_id)
        return
    if result.stopped:
        store.finish(job_id, "canceled", {"eta_seconds": None})
        log.info("job %s: canceled at iteration %d", job_id, result.iterations_run)
        return
    metadata = {"weights": result.weights, "seed": str(result.seed), "best_iteration": str(result.best_iteration)}
    png = encode_image(result.image, "PNG", metadata)
    fields = {"iteration": result.iterations_run, "losses": losses, "eta_seconds": 0.0}
    if store.finish(job_id, "succeeded", fields, result_png=png):
        log.info("job %s: succeeded in %.1f s", job_id, result.elapsed)
