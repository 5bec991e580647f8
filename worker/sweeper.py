"""The blob store's sweeper: what no job needs any more goes.

- Objects of a job whose record is gone: it expired, was deleted, or its submission died between
  storing its files and writing the job to Redis. Only once its newest object is older than
  NST_SWEEP_GRACE_SECONDS: a submission still storing its files has none in Redis yet.
- The inputs and checkpoint of a finished job (its run removes them as it ends; this catches a
  run that died or a store that failed then, and jobs canceled while queued). The result stays
  until the job goes.

One worker of a cluster sweeps per NST_SWEEP_INTERVAL_SECONDS: the one whose heartbeat takes the
lock (a Redis key that lapses after the interval). The sweep runs on a thread of its own, so a
long listing never holds back the heartbeat that renews the leases of running jobs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

from jobs.blobs import BlobError, BlobStore
from jobs.record import TERMINAL
from jobs.store import JobStore
from worker.blob_io import drop_inputs
from worker.context import WorkerContext

log = logging.getLogger(__name__)

STATUS_BATCH = 500  # job ids whose status one Redis round trip reads


@dataclass(frozen=True)
class SweepReport:
    jobs: int  # job ids with objects in the store
    orphans: int  # of them, jobs gone from Redis whose objects were removed
    young: int  # jobs gone from Redis whose objects are within the grace: kept
    finished: int  # finished jobs whose inputs or checkpoint were removed
    objects: int  # objects removed in all
    failed: int  # jobs whose objects the store would not remove (the next sweep tries again)


def sweep(store: JobStore, blobs: BlobStore, grace_seconds: float, now: datetime | None = None) -> SweepReport:
    """One pass over the store; a failing listing or Redis raises, a failing removal is counted."""
    now = now or datetime.now(UTC)
    listing = blobs.jobs()
    ids = sorted(listing)
    statuses: dict[str, str | None] = {}
    for start in range(0, len(ids), STATUS_BATCH):
        statuses |= store.statuses(ids[start : start + STATUS_BATCH])
    orphans = young = finished = objects = failed = 0
    for job_id in ids:
        status = statuses[job_id]
        try:
            written = listing[job_id]
            if status is None:
                if (now - max(written.values())).total_seconds() <= grace_seconds:
                    young += 1
                    continue
                objects += blobs.delete_job(job_id, written)
                orphans += 1
            elif status in TERMINAL:
                removed = drop_inputs(blobs, job_id, written)
                objects += removed
                finished += removed > 0
        except BlobError as exc:
            failed += 1
            log.warning("sweep: the objects of job %s stay for now: %s", job_id, exc)
    report = SweepReport(len(ids), orphans, young, finished, objects, failed)
    log.log(
        logging.INFO if objects or failed else logging.DEBUG,
        "sweep: %d objects removed (%d jobs gone, %d finished), %d young jobs kept, %d failed, of %d jobs",
        objects,
        orphans,
        finished,
        young,
        failed,
        len(ids),
    )
    return report


def _sweep_logged(context: WorkerContext) -> None:
    try:
        sweep(context.store, context.blobs, context.settings.sweep_grace_seconds)
    except Exception as exc:  # the store or Redis away: the next interval's sweep tries again
        log.warning("sweep failed: %s", exc)


def start_sweep(context: WorkerContext, running: threading.Thread | None) -> threading.Thread | None:
    """On the heartbeat's thread: start a sweep if none of this worker's runs and the lock is
    free; returns the sweep's thread (or the one still running). Never raises."""
    if running is not None and running.is_alive():
        return running
    try:
        taken = context.store.take_sweep_lock(context.name, context.settings.sweep_interval_seconds)
    except Exception as exc:  # Redis away: the heartbeat says so too
        log.warning("sweep lock not taken: %s", exc)
        return None
    if not taken:
        return None
    thread = threading.Thread(target=_sweep_logged, args=(context,), name="nst-sweeper", daemon=True)
    thread.start()
    return thread
