"""One turn of the job queue: claim a job, run it (inputs from the blob store, core.stylize,
progress and snapshots to Redis, the result and checkpoints to the blob store) and record how it
ended. A job an earlier version queued keeps its files in Redis, and its run keeps them there.

Exactly once: a run claims the job (queued -> running) with a random run token and a lease that
the worker's heartbeat renews. If the worker dies, the lease lapses and any worker's reaper
queues the job again; the next run resumes from the last checkpoint. A run that finds the job
claimed by another token stops without writing anything, and only the holder may finish it.
"""

from __future__ import annotations

import logging
import math
import secrets
from typing import Any

import torch

from core.checkpoint import Checkpoint
from core.decode import image_size, open_image
from core.errors import StyleError
from core.logs import job_context
from core.memory import JobTooBig, MemoryEstimate, fit_job
from core.output import encode_image
from core.params import StyleParams
from core.transfer import Progress, StyleResult, stylize
from core.weights import WeightsSource
from jobs.blobs import BlobError, StoreFull
from jobs.problems import problem_body
from jobs.record import JobRecord, JobStatus
from jobs.webhooks import announce
from worker.blob_io import RESULT_ATTEMPTS, drop_inputs_quietly, drop_result, store_result, until_store_answers
from worker.context import WorkerContext, worker_context
from worker.device_profile import DeviceProfile, is_out_of_memory
from worker.progress_publisher import ProgressPublisher, finite_or_none, finite_values
from worker.redis_retry import best_effort, until_redis_answers
from worker.stop_check import StopCheck

log = logging.getLogger(__name__)


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
        _finish(context, record, token, "failed", {"error": problem_body(kind, detail)}, "recording the failure")

    try:
        result = _optimise(context, record, weights, stop)
    except JobTooBig as exc:
        fail("too-much-memory", str(exc))
        log.warning("job %s refused: %s", job_id, exc)
        return
    except BlobError as exc:  # the store did not answer for as long as Redis is waited for
        fail("storage-unavailable", f"the job's images could not be read from the blob store: {exc}")
        log.error("job %s failed: %s", job_id, exc)
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
    _record_outcome(context, record, result, stop, token)


def _finish(
    context: WorkerContext,
    record: JobRecord,
    token: str,
    status: JobStatus,
    fields: dict[str, Any],
    what: str,
    *,
    png: bytes | None = None,
    result_bytes: int = 0,
) -> bool:
    """The job's end, if this run still holds it; then nothing can run it again, so its input and
    checkpoint objects go (best effort: the sweeper removes what this misses)."""
    finished = until_redis_answers(
        what, lambda: context.store.finish(record.id, status, fields, token, png, result_bytes=result_bytes)
    )
    if finished and record.blobs:
        drop_inputs_quietly(context.blobs, record.id)
    return finished


def _optimise(context: WorkerContext, record: JobRecord, weights: WeightsSource, stop: StopCheck) -> StyleResult:
    store = context.store
    blobs = context.blobs if record.blobs else None  # None: a job of an earlier version, files in Redis
    if blobs is not None:
        inputs = until_store_answers("reading the inputs", lambda: store.inputs(record.id, record.style_count, blobs))
        missing = "the job's input images are missing from the blob store (deleted, or removed with the job)"
    else:
        inputs = until_redis_answers("reading the inputs", lambda: store.inputs(record.id, record.style_count))
        missing = "the job's input images have expired"
    if inputs is None:
        raise StyleError(missing)
    content_bytes, style_bytes = inputs
    params = StyleParams.model_validate(record.params)
    content = open_image(content_bytes)
    styles = [open_image(data) for data in style_bytes]
    memory = memory_plan(context.profile(), params, image_size(content))
    resume = None
    saved = _read_checkpoint(context, record)
    if saved is not None:
        try:
            resume = Checkpoint.from_bytes(saved)
        except Exception as exc:  # written by another version, or damaged: the job starts over
            log.warning("job %s: its checkpoint cannot be read (%s); starting from the beginning", record.id, exc)
        else:
            log.info("job %s: resuming from the checkpoint at iteration %d", record.id, resume.iteration)

    def save(checkpoint: Checkpoint) -> None:
        if stop.canceled or stop.superseded:  # ending, deleted, or another run's: nothing to resume
            return
        data = checkpoint.to_bytes()
        if blobs is None:
            best_effort("checkpoint", lambda: store.save_checkpoint(record.id, data))
            return
        try:
            store.save_checkpoint(record.id, data, blobs)
        except BlobError as exc:  # as with Redis: a checkpoint must not kill the job
            log.warning("checkpoint skipped, the blob store failed: %s", exc)

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


def _read_checkpoint(context: WorkerContext, record: JobRecord) -> bytes | None:
    """The last checkpoint, if any; one the blob store will not give (after a short wait) is
    none: the job starts over rather than fail."""
    store = context.store
    if not record.blobs:
        return until_redis_answers("reading the checkpoint", lambda: store.checkpoint(record.id))
    blobs = context.blobs
    try:
        return until_store_answers("reading the checkpoint", lambda: store.checkpoint(record.id, blobs), seconds=10)
    except BlobError as exc:
        log.warning("job %s: its checkpoint cannot be read (%s); starting from the beginning", record.id, exc)
        return None


def memory_plan(profile: DeviceProfile, params: StyleParams, original: tuple[int, int]) -> MemoryEstimate:
    """How the job fits this worker's budget (checkpointing if it must); JobTooBig if it cannot.

    A job the API admitted can still land here: it was queued before this worker started, or
    the worker that could hold it has gone."""
    return fit_job(
        params, original, profile.memory_budget_bytes, device_type=profile.device_type,
        precision=profile.precision, whose="this worker's memory budget", model=profile.memory_model,
    )  # fmt: skip


def _record_outcome(
    context: WorkerContext, record: JobRecord, result: StyleResult, stop: StopCheck, token: str
) -> None:
    store, job_id = context.store, record.id
    losses = finite_values(result.losses.public()) if result.losses is not None else None
    if stop.superseded:
        if until_redis_answers("reading the job", lambda: store.run_state(job_id))[0] is None:
            log.info("job %s: deleted while it ran; this run stops without writing", job_id)
            return
        if not stop.canceled:
            log.warning("job %s: another run holds it now; this run stops without writing", job_id)
            return
    if stop.timed_out:
        detail = f"the job ran past the time limit and was stopped at iteration {result.iterations_run}"
        _finish(context, record, token, "failed", {"error": problem_body("timeout", detail)}, "timing out")
        log.warning("job %s: timed out", job_id)
        return
    if result.stopped:
        _finish(context, record, token, "canceled", {"eta_seconds": None}, "canceling")
        log.info("job %s: canceled at iteration %d", job_id, result.iterations_run)
        return
    if result.losses is None or not math.isfinite(result.losses.total):
        detail = (
            f"every loss of the {result.iterations_run} iterations was infinite or not a number: the weights are "
            "too large (content_weight, style_weight, tv_weight or a layer weight)"
        )
        error = problem_body("diverged", detail)
        _finish(context, record, token, "failed", {"error": error}, "recording the divergence")
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
    if record.blobs:
        _succeed_with_object(context, record, token, fields, png, result.elapsed)
    elif _finish(context, record, token, "succeeded", fields, "storing the result", png=png):
        log.info("job %s: succeeded in %.1f s", job_id, result.elapsed)
    else:
        log.warning("job %s: finished, but another run held it; result dropped", job_id)


def _succeed_with_object(
    context: WorkerContext, record: JobRecord, token: str, fields: dict[str, Any], png: bytes, elapsed: float
) -> None:
    """The result goes to the blob store first, then the job succeeds in Redis: a job is never
    succeeded without its result. A result that cannot be stored fails the job, clearly; one
    whose job this run does not end (deleted, canceled, another run's) is removed again."""
    store, blobs, job_id = context.store, context.blobs, record.id
    status, holder, _ = until_redis_answers("reading the job", lambda: store.run_state(job_id))
    if status != "running" or holder != token:  # no object written for a job this run no longer holds
        log.warning("job %s: no longer this run's (%s); result dropped", job_id, status or "deleted")
        return
    try:
        store_result(blobs, job_id, png)
    except BlobError as exc:
        kind = "storage-full" if isinstance(exc, StoreFull) else "storage-unavailable"
        detail = f"the result could not be stored in the blob store ({RESULT_ATTEMPTS} attempts): {exc}"
        _finish(context, record, token, "failed", {"error": problem_body(kind, detail)}, "recording the failure")
        log.error("job %s: failed, its result could not be stored: %s", job_id, exc)
        return
    if _finish(context, record, token, "succeeded", fields, "recording the result", result_bytes=len(png)):
        log.info("job %s: succeeded in %.1f s", job_id, elapsed)
        return
    # Deleted, canceled or taken by another run meanwhile. An object some run left for a job that
    # succeeded is that job's result (the same path): it stays.
    now = until_redis_answers("reading the job", lambda: store.get(job_id))
    if now is None or now.status != "succeeded":
        drop_result(blobs, job_id)
    log.warning("job %s: finished, but this run no longer held it; result dropped", job_id)
