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
from dataclasses import dataclass

import torch

from core.batch import BatchedRun, BatchMember, batch_member
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


def run_batched(context: WorkerContext, record: JobRecord, weights: WeightsSource, token: str) -> None:
    """Run the claimed `record` and every job that joins it, until the batch is empty."""
    batch = _Batch(context, weights)
    batch.start(record, token)
    try:
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
        self.next_check = 0.0

    def start(self, record: JobRecord, token: str, memory: MemoryEstimate | None = None) -> None:
        """The claimed job joins (or starts) the batch; a job that cannot run fails alone."""
        context, settings = self.context, self.context.settings
        with context.lock:
            context.running[record.id] = token
        with job_context(record.id):
            log.info("job %s: started (attempt %d) in a batch of %d", record.id, record.attempts, len(self.run) + 1)
            announce(context.store, record.id, "started", settings=settings)  # once a job
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
            except Exception as exc:
                if prepared is not None:
                    prepared.publisher.close(drain=False)
                record_failure(context, record, token, exc)
                self._end(record.id)
                return
        self.jobs[record.id] = _Running(prepared, member)

    def step(self) -> None:
        """One iteration of every member; the ones that finished or stopped end."""
        try:
            left = self.run.step()
        except Exception as exc:  # the batch's pass failed (out of memory, say): every member with it
            for job_id, running in list(self.jobs.items()):
                with job_context(job_id):
                    running.prepared.publisher.close(drain=False)
                    record_failure(self.context, running.prepared.record, running.prepared.token, exc)
                self._end(job_id)
            self.jobs.clear()
            self.run = BatchedRun()
            return
        for member in left:
            running = self.jobs.pop(member.name)
            prepared, result = running.prepared, member.result
            assert result is not None  # set as it left
            with job_context(member.name):
                prepared.publisher.close(drain=not result.stopped)
                record_outcome(self.context, prepared.record, result, prepared.stop, prepared.token)
            self._end(member.name)

    def maybe_join(self) -> None:
        """Claim the next job in fair order if it can join now (see the module's docstring)."""
        context, store = self.context, self.context.store
        key = self.run.key
        now = time.monotonic()
        if key is None or now < self.next_check:
            return
        self.next_check = now + JOIN_CHECK_SECONDS
        if len(self.run) >= context.profile().batch_policy.limit(key_size(key)):
            return
        peeked = best_effort("looking for a job to batch", store.peek_next)
        if peeked is None or peeked[1] != key:
            return
        job_id = peeked[0]
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
        for job_id, running in self.jobs.items():
            running.prepared.publisher.close(drain=False)
            with self.context.lock:
                self.context.running.pop(job_id, None)
        self.jobs.clear()

    def _end(self, job_id: str) -> None:
        with self.context.lock:
            self.context.running.pop(job_id, None)
        announce(self.context.store, job_id, "completed", settings=self.context.settings)  # if final (once a job)
