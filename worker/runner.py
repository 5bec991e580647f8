"""One turn of the job queue: claim a job, run it (inputs from the blob store, core.stylize,
progress and snapshots to Redis, the result and checkpoints to the blob store) and record how it
ended. A job an earlier version queued keeps its files in Redis, and its run keeps them there.
A job that can share a batch (core.batching) on a worker that batches runs in a batch that
later compatible jobs join (worker/batch_runner.py); the steps both share: worker/job_steps.py.

Exactly once: a run claims the job (queued -> running) with a random run token and a lease that
the worker's heartbeat renews. If the worker dies, the lease lapses and any worker's reaper
queues the job again; the next run resumes from the last checkpoint. A run that finds the job
claimed by another token stops without writing anything, and only the holder may finish it.
"""

from __future__ import annotations

import logging
import secrets

import torch

from core.logs import job_context
from core.transfer import StyleResult, stylize
from core.weights import WeightsSource
from jobs.record import JobRecord
from jobs.webhooks import announce
from worker.batch_runner import batches, run_batched
from worker.context import WorkerContext, worker_context
from worker.job_steps import PreparedJob, prepare_job, record_failure, record_outcome
from worker.redis_retry import until_redis_answers

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
    store = context.store
    record = until_redis_answers("reading the job", lambda: store.get(job_id))
    if record is None:
        log.warning("job %s: its record expired as it started", job_id)
        return
    if batches(context, record):
        run_batched(context, record, weights, token, lambda other, held: _run_alone(context, other, weights, held))
        return
    _run_alone(context, record, weights, token)


def _run_alone(context: WorkerContext, record: JobRecord, weights: WeightsSource, token: str) -> None:
    store, settings, job_id = context.store, context.settings, record.id
    with context.lock:
        context.running[job_id] = token
    log.info("job %s: started (attempt %d)", job_id, record.attempts)
    announce(store, job_id, "started", settings=settings)  # once a job: a resumed run sends none
    try:
        _run_claimed(context, record, weights, token)
    finally:
        with context.lock:
            context.running.pop(job_id, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    announce(store, job_id, "completed", settings=settings)  # if the job is final now (once a job)


def _run_claimed(context: WorkerContext, record: JobRecord, weights: WeightsSource, token: str) -> None:
    try:
        prepared = prepare_job(context, record, weights, token)
        result = _optimise(context, prepared, weights)
    except Exception as exc:
        record_failure(context, record, token, exc)
        return
    record_outcome(context, record, result, prepared.stop, token)


def _optimise(context: WorkerContext, prepared: PreparedJob, weights: WeightsSource) -> StyleResult:
    try:
        result = stylize(
            prepared.content,
            prepared.styles,
            prepared.params,
            device=context.settings.device,
            weights=weights,
            on_progress=prepared.on_progress,
            should_stop=prepared.stop,
            report_every=prepared.report_every,
            checkpoint_every=context.settings.checkpoint_every,
            on_checkpoint=prepared.save,
            resume=prepared.resume,
            checkpointing=prepared.memory.checkpointing,
        )
    except BaseException:
        prepared.publisher.close(drain=False)
        raise
    # A finished run's snapshots are all stored before it is marked succeeded; a stopped run's
    # waiting ones are dropped (the write under way completes: nothing is left half-written).
    prepared.publisher.close(drain=not result.stopped)
    return result
