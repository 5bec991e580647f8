"""The steps of running one job that a lone run (worker/runner.py) and a batched one
(worker/batch_runner.py) share: its inputs, checkpoint, memory plan, progress publisher and stop
check made ready; its failure recorded; its result stored and the job ended."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from core.checkpoint import Checkpoint
from core.decode import image_size, open_image
from core.errors import StyleError
from core.memory import JobTooBig, MemoryEstimate, fit_job
from core.output import encode_image
from core.params import StyleParams
from core.transfer import Progress, StyleResult
from core.weights import WeightsSource
from jobs.blobs import BlobError, StoreFull
from jobs.problems import problem_body
from jobs.record import JobRecord, JobStatus
from worker.blob_io import RESULT_ATTEMPTS, drop_inputs_quietly, drop_result, store_result, until_store_answers
from worker.context import WorkerContext
from worker.device_profile import DeviceProfile, is_out_of_memory
from worker.progress_publisher import ProgressPublisher, finite_or_none, finite_values
from worker.redis_retry import best_effort, until_redis_answers
from worker.stop_check import StopCheck

log = logging.getLogger("worker.runner")  # as before these steps left worker/runner.py


@dataclass
class PreparedJob:
    """A claimed job ready to optimise: what core's stylize (or a batch member) is called with."""

    record: JobRecord
    token: str
    stop: StopCheck
    params: StyleParams
    content: Image.Image
    styles: list[Image.Image]
    memory: MemoryEstimate
    resume: Checkpoint | None
    save: Callable[[Checkpoint], None]
    publisher: ProgressPublisher
    on_progress: Callable[[Progress], None]

    @property
    def report_every(self) -> int:
        return max(1, self.params.snapshot_every // 5)


def prepare_job(
    context: WorkerContext,
    record: JobRecord,
    weights: WeightsSource,
    token: str,
    memory: MemoryEstimate | None = None,
) -> PreparedJob:
    """Read the job's inputs and checkpoint, plan its memory (`memory`: a batch's plan for it
    instead) and make its publisher and stop check. Raises what `record_failure` turns into the
    job's error: JobTooBig, BlobError, StyleError, ValueError, or anything else."""
    store = context.store
    stop = StopCheck(store, record.id, token, context.settings.job_timeout_seconds)
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
    if memory is None:
        memory = memory_plan(context.profile(), params, image_size(content))
    resume = None
    saved = read_checkpoint(context, record)
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

    return PreparedJob(record, token, stop, params, content, styles, memory, resume, save, publisher, on_progress)


def record_failure(context: WorkerContext, record: JobRecord, token: str, exc: BaseException) -> None:
    """The job failed with `exc` before (or while) it ran: its error, in the client's words."""
    job_id = record.id

    def fail(kind: str, detail: str) -> None:
        finish(context, record, token, "failed", {"error": problem_body(kind, detail)}, "recording the failure")

    if isinstance(exc, JobTooBig):
        fail("too-much-memory", str(exc))
        log.warning("job %s refused: %s", job_id, exc)
    elif isinstance(exc, BlobError):  # the store did not answer for as long as Redis is waited for
        fail("storage-unavailable", f"the job's images could not be read from the blob store: {exc}")
        log.error("job %s failed: %s", job_id, exc)
    elif isinstance(exc, StyleError | ValueError):
        fail("invalid-job", str(exc))
        log.warning("job %s failed: %s", job_id, exc)
    elif is_out_of_memory(exc):
        fail("out-of-memory", "the device ran out of memory; try a smaller height and width")
        log.warning("job %s: out of memory", job_id)
    else:
        log.error("job %s: unexpected error", job_id, exc_info=exc)
        fail("job-failed", f"internal error: {type(exc).__name__}")


def finish(
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


def read_checkpoint(context: WorkerContext, record: JobRecord) -> bytes | None:
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


def record_outcome(context: WorkerContext, record: JobRecord, result: StyleResult, stop: StopCheck, token: str) -> None:
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
        finish(context, record, token, "failed", {"error": problem_body("timeout", detail)}, "timing out")
        log.warning("job %s: timed out", job_id)
        return
    if result.stopped:
        finish(context, record, token, "canceled", {"eta_seconds": None}, "canceling")
        log.info("job %s: canceled at iteration %d", job_id, result.iterations_run)
        return
    if result.losses is None or not math.isfinite(result.losses.total):
        detail = (
            f"every loss of the {result.iterations_run} iterations was infinite or not a number: the weights are "
            "too large (content_weight, style_weight, tv_weight or a layer weight)"
        )
        error = problem_body("diverged", detail)
        finish(context, record, token, "failed", {"error": error}, "recording the divergence")
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
        succeed_with_object(context, record, token, fields, png, result.elapsed)
    elif finish(context, record, token, "succeeded", fields, "storing the result", png=png):
        log.info("job %s: succeeded in %.1f s", job_id, result.elapsed)
    else:
        log.warning("job %s: finished, but another run held it; result dropped", job_id)


def succeed_with_object(
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
        finish(context, record, token, "failed", {"error": problem_body(kind, detail)}, "recording the failure")
        log.error("job %s: failed, its result could not be stored: %s", job_id, exc)
        return
    if finish(context, record, token, "succeeded", fields, "recording the result", result_bytes=len(png)):
        log.info("job %s: succeeded in %.1f s", job_id, elapsed)
        return
    # Deleted, canceled or taken by another run meanwhile. An object some run left for a job that
    # succeeded is that job's result (the same path): it stays.
    now = until_redis_answers("reading the job", lambda: store.get(job_id))
    if now is None or now.status != "succeeded":
        drop_result(blobs, job_id)
    log.warning("job %s: finished, but this run no longer held it; result dropped", job_id)
