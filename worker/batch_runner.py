"""Continuous batching in the worker: queued jobs join the running optimisation.

A job that can share a batch (core.batching) on a worker that batches at its size starts a
batch (core.batch). Between two iterations, at most every JOIN_CHECK_SECONDS, the worker looks at
the job that would be claimed next in fair order (jobs/lua/peek.lua): if it has the batch's key,
the batch has room (NST_MAX_BATCH or the measured policy) and the batch with it fits the memory
budget, the worker claims that very job and it joins. Nothing else is taken out of turn: a job
that cannot join, at the head of the queue, stops all joining, so it waits only for the jobs
already in the batch, as it would wait for one job without batching.

Each job in a batch keeps its own claim, lease (the heartbeat renews them all), stop check
(cancel, lost claim, time limit), progress publisher, checkpoints and outcome, exactly as a lone
run (worker/job_steps.py); one that finishes or stops leaves and the rest go on. If the worker
dies, every member's lease lapses and each is queued again and resumes from its checkpoint.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from core.batch import BatchedRun, BatchMember, CannotBatch, batch_member
from core.batching import key_size
from core.logs import job_context
from core.memory import MemoryEstimate, batch_bytes, estimate_bytes, written_model
from core.params import StyleParams
from core.sizes import working_size
from core.weights import WeightsSource
from jobs.record import JobRecord
from jobs.webhooks import announce
from worker.context import WorkerContext
from worker.job_steps import PreparedJob, prepare_job, record_failure, record_outcome
from worker.redis_retry import best_effort, until_redis_answers

log = logging.getLogger(__name__)

# How often a running batch looks for a job to join it (one Redis round trip).
JOIN_CHECK_SECONDS = 0.25


def batches(context: WorkerContext, record: JobRecord) -> bool:
    """Whether `record` runs in a batch that others may join on this worker."""
    if record.batch_key is None:
        return False
    return context.profile().batch_policy.limit(key_size(record.batch_key)) > 1


def run_batched(
    context: WorkerContext,
    record: JobRecord,
    weights: WeightsSource,
    token: str,
    run_alone: Callable[[JobRecord, str], None],
) -> None:
    """Run the claimed `record` and every job that joins it, until the batch is empty. A claimed
    job that turns out unable to share the batch runs alone afterwards (`run_alone`)."""
    batch = _Batch(context, weights)
    try:
        batch.start(record, token)
        while batch.run:
            batch.step()
            if batch.run:
                batch.maybe_join()
    except BaseException:
        batch.abandon()
        raise
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    for deferred, deferred_token in batch.deferred:
        run_alone(deferred, deferred_token)


@dataclass
class _Running:
    prepared: PreparedJob
    member: BatchMember


class _Batch:
    def __init__(self, context: WorkerContext, weights: WeightsSource) -> None:
        self.context = context
        self.weights = weights
        self.run = BatchedRun()
        self.jobs: dict[str, _Running] = {}
        self.claimed: set[str] = set()  # in context.running on this batch's behalf
        self.deferred: list[tuple[JobRecord, str]] = []  # claimed, but to run alone afterwards
        self.next_check = 0.0

    def start(self, record: JobRecord, token: str, memory: MemoryEstimate | None = None) -> None:
        """The claimed job joins (or starts) the batch; a job that cannot run fails alone."""
        context, settings = self.context, self.context.settings
        with context.lock:
            context.running[record.id] = token
        self.claimed.add(record.id)
        with job_context(record.id):
            prepared: PreparedJob | None = None
            try:
                prepared = prepare_job(context, record, self.weights, token, memory)
                member = batch_member(
                    prepared.content,
                    prepared.styles,
                    prepared.params,
                    name=record.id,
                    device=settings.device,
                    weights=self.weights,
                    on_progress=prepared.on_progress,
                    should_stop=prepared.stop,
                    report_every=prepared.report_every,
                    checkpoint_every=settings.checkpoint_every,
                    on_checkpoint=prepared.save,
                    resume=prepared.resume,
                    checkpointing=prepared.memory.checkpointing,
                )
                self.run.add(member)
            except CannotBatch as exc:  # its key and this worker's disagree (another version's API)
                log.warning("job %s: runs alone after this batch (%s)", record.id, exc)
                if prepared is not None:
                    prepared.publisher.close(drain=False)
                self.deferred.append((record, token))
                return
            except Exception as exc:
                try:
                    if prepared is not None:
                        prepared.publisher.close(drain=False)
                    record_failure(context, record, token, exc)
                finally:
                    self._end(record.id)
                return
            log.info("job %s: started (attempt %d) in a batch of %d", record.id, record.attempts, len(self.run))
            announce(context.store, record.id, "started", settings=settings)  # once a job
        self.jobs[record.id] = _Running(prepared, member)

    def step(self) -> None:
        """One iteration of every member; the ones that finished, stopped or failed end."""
        try:
            left = self.run.step()
        except Exception as exc:  # the shared pass failed, even one image at a time: every member with it
            failed = list(self.jobs.items())
            self.jobs.clear()
            self.run = BatchedRun()
            for job_id, running in failed:
                with job_context(job_id):
                    try:
                        running.prepared.publisher.close(drain=False)
                        record_failure(self.context, running.prepared.record, running.prepared.token, exc)
                    finally:
                        self._end(job_id)
            return
        for member in left:
            running = self.jobs.pop(member.name)
            prepared = running.prepared
            with job_context(member.name):
                try:
                    if member.error is not None or member.result is None:
                        prepared.publisher.close(drain=False)
                        error = member.error or RuntimeError("the job left its batch without a result")
                        record_failure(self.context, prepared.record, prepared.token, error)
                        continue
                    prepared.publisher.close(drain=not member.result.stopped)
                    record_outcome(self.context, prepared.record, member.result, prepared.stop, prepared.token)
                finally:
                    self._end(member.name)

    def maybe_join(self) -> None:
        """Claim the next job in fair order if it can join now (see the module's docstring)."""
        context, store = self.context, self.context.store
        key = self.run.key
        now = time.monotonic()
        if key is None or now < self.next_check or context.stopping.is_set():
            return
        self.next_check = now + JOIN_CHECK_SECONDS
        limit = context.profile().batch_policy.limit(key_size(key))
        if len(self.run) >= min(limit, self.run.chunk or limit):  # chunk: what fitted in one pass
            return
        peeked = best_effort("looking for a job to batch", store.peek_next)
        if peeked is None or peeked[1] != key:
            return
        job_id = peeked[0]
        with context.lock:
            if job_id in context.running:  # its lease lapsed and it was queued again: ours still runs
                return
        record = best_effort("reading a job to batch", lambda: store.get(job_id))
        if record is None or record.status != "queued":
            return
        memory = self._fits(record)
        if memory is None:
            return
        token = secrets.token_hex(8)
        fields = {"status": "running", "weights": self.weights.label, "worker": context.name}
        took, _ = until_redis_answers(
            "claiming a job for the batch", lambda: store.claim(job_id, fields, token, context.settings.lease_seconds)
        )
        if not took:  # another worker took it meanwhile
            return
        claimed = until_redis_answers("reading the job", lambda: store.get(job_id))
        if claimed is None:
            log.warning("job %s: its record expired as it joined a batch", job_id)
            return
        self.start(claimed, token, memory)

    def _fits(self, record: JobRecord) -> MemoryEstimate | None:
        """`record`'s share of the batch, planned as the batch runs (checkpointing or not), if the
        batch with it fits the memory budget; None if not (or unknown: it then runs later)."""
        if not self.jobs or record.content_size is None or len(record.content_size) != 2:
            return None
        try:
            params = StyleParams.model_validate(record.params)
        except ValueError:
            return None  # its own run will say why
        profile = self.context.profile()
        checkpointing = next(iter(self.jobs.values())).prepared.memory.checkpointing
        model = profile.memory_model or written_model(profile.device_type, profile.precision)
        original = (record.content_size[0], record.content_size[1])
        own = estimate_bytes(
            working_size(original, params), params, device_type=profile.device_type, precision=profile.precision,
            checkpointing=checkpointing, original=original, model=model,
        )  # fmt: skip
        estimates = [running.prepared.memory.bytes for running in self.jobs.values()] + [own]
        if batch_bytes(estimates, model.constants(checkpointing).fixed) > profile.memory_budget_bytes:
            return None
        return MemoryEstimate(own, checkpointing)

    def abandon(self) -> None:
        """The worker is stopping mid-batch: nothing is written; each member's lease lapses and
        the job is queued again, to resume from its checkpoint."""
        for running in self.jobs.values():
            running.prepared.publisher.close(drain=False)
        self.jobs.clear()
        with self.context.lock:
            for job_id in self.claimed:
                self.context.running.pop(job_id, None)
        self.claimed.clear()

    def _end(self, job_id: str) -> None:
        self.claimed.discard(job_id)
        with self.context.lock:
            self.context.running.pop(job_id, None)
        announce(self.context.store, job_id, "completed", settings=self.context.settings)  # if final (once a job)
