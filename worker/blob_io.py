"""How a job's run treats the blob store (jobs/blobs.py): reads wait for it like the final
writes wait for Redis, the result is written again a few times before the job fails with a
clear error, and clean-ups are best effort (the sweeper, worker/sweeper.py, catches what they miss)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from jobs.blobs import BlobError, BlobStore, result_path
from worker.redis_retry import FINAL_WRITE_SECONDS

# Named as the runner's records, so a job's log lines come from one logger.
log = logging.getLogger("worker.runner")

T = TypeVar("T")
RESULT_ATTEMPTS = 4  # writes of a result before the job fails: about 7 s of back-off in all
RESULT_FIRST_DELAY = 1.0


def until_store_answers(what: str, action: Callable[[], T], seconds: float = FINAL_WRITE_SECONDS) -> T:
    """Reads a job cannot run without wait for the store (a restart, a network blip) as long as
    the final writes wait for Redis; then its BlobError goes to the caller."""
    deadline = time.monotonic() + seconds
    delay = 0.2
    while True:
        try:
            return action()
        except BlobError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s: the blob store failed (%s); retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def store_result(blobs: BlobStore, job_id: str, png: bytes, attempts: int = RESULT_ATTEMPTS) -> None:
    """Write the result object, again with back-off while the store fails or is full; the last
    BlobError (StoreFull for a full one) goes to the caller, which fails the job with it."""
    delay = RESULT_FIRST_DELAY
    for attempt in range(1, attempts + 1):
        try:
            blobs.put(result_path(job_id), png)
            return
        except BlobError as exc:
            if attempt == attempts:
                raise
            log.warning("job %s: result not stored (attempt %d of %d): %s", job_id, attempt, attempts, exc)
            time.sleep(delay)
            delay *= 2


def drop_result(blobs: BlobStore, job_id: str) -> None:
    """Best effort: a result this run wrote for a job it did not finish."""
    try:
        blobs.delete([result_path(job_id)])
    except BlobError as exc:  # the sweeper removes it once the job is gone
        log.warning("job %s: its unused result object stays for now: %s", job_id, exc)


def drop_inputs(blobs: BlobStore, job_id: str, listed: Iterable[str] | None = None) -> int:
    """Remove a finished job's objects but its result (inputs, checkpoint); how many went.
    `listed`: its objects, when the caller listed them already (the sweeper).
    Raises BlobError: the sweeper counts its failures, `drop_inputs_quietly` logs them."""
    keep = result_path(job_id)
    paths = [path for path in (listed if listed is not None else blobs.job_objects(job_id)) if path != keep]
    blobs.delete(paths)
    return len(paths)


def drop_inputs_quietly(blobs: BlobStore, job_id: str) -> None:
    """After a job's end: nothing can run it again, so its inputs and checkpoint go (best effort)."""
    try:
        drop_inputs(blobs, job_id)
    except BlobError as exc:  # the sweeper removes them later
        log.warning("job %s: its inputs stay in the blob store for now: %s", job_id, exc)
