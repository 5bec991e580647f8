"""The blob store's sweeper against a real Redis and a real directory store: what no job needs
goes, what a job or a submission in progress may still need stays, one worker sweeps at a time,
and a sweep that fails never stops the heartbeat."""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from jobs.blobs import BlobStore, checkpoint_path, content_path, input_paths, result_path, style_path
from jobs.keys import SWEEP_LOCK_KEY, WORKERS_KEY, job_key
from jobs.record import JobRecord, new_job_id
from jobs.settings import Settings
from jobs.store import JobStore
from tests.services import HANG
from worker.context import WorkerContext
from worker.heartbeat import start_heartbeat
from worker.sweeper import start_sweep, sweep

GRACE = 3600.0


@pytest.fixture
def store(redis_db: redis.Redis) -> JobStore:
    return JobStore(redis_db, 3600)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(str(tmp_path / "blobs"))


def put_all(blobs: BlobStore, job_id: str, *, result: bool = False, checkpoint: bool = False) -> None:
    paths = input_paths(job_id, 1) + [result_path(job_id)] * result + [checkpoint_path(job_id)] * checkpoint
    for path in paths:
        blobs.put(path, b"bytes of " + path.encode())


def age(blobs: BlobStore, job_id: str, seconds: float) -> None:
    """Make the job's objects look `seconds` old (a directory store's objects are files)."""
    assert blobs.root is not None
    then = time.time() - seconds
    for path in blobs.job_objects(job_id):
        os.utime(blobs.root / path, (then, then))


def job(store: JobStore, status: str) -> str:
    """A job of this version in Redis with the given status."""
    record = JobRecord(id=new_job_id(), params={"iterations": 5}, style_count=1, blobs=True)
    store.create(record)
    if status != "queued":
        store.redis.hset(job_key(record.id), "status", f'"{status}"')  # as its run left it
    return record.id


def context_of(store: JobStore, blobs: BlobStore, name: str, **settings: float) -> WorkerContext:
    port = store.redis.connection_pool.connection_kwargs["port"]
    config = Settings(redis_url=f"redis://127.0.0.1:{port}/0", device="cpu", **settings)  # type: ignore[arg-type]
    return WorkerContext(config, store, name, blob_store=blobs)


def test_a_sweep_removes_what_no_job_needs_and_keeps_the_rest(store: JobStore, blobs: BlobStore) -> None:
    old_orphan, young_orphan = new_job_id(), new_job_id()  # no record: expired, deleted, or a submission
    put_all(blobs, old_orphan, result=True, checkpoint=True)
    put_all(blobs, young_orphan)
    age(blobs, old_orphan, GRACE + 60)
    queued, running, done, failed = (job(store, s) for s in ("queued", "running", "succeeded", "failed"))
    for job_id in (queued, running, done):
        put_all(blobs, job_id, result=job_id == done, checkpoint=job_id != queued)
    put_all(blobs, failed)
    age(blobs, done, GRACE + 60)  # a finished job's result stays however old: the job is there

    report = sweep(store, blobs, GRACE)

    assert blobs.job_objects(old_orphan) == []
    assert sorted(blobs.job_objects(young_orphan)) == sorted(input_paths(young_orphan, 1))
    assert sorted(blobs.job_objects(queued)) == sorted(input_paths(queued, 1))
    assert sorted(blobs.job_objects(running)) == sorted([*input_paths(running, 1), checkpoint_path(running)])
    assert blobs.job_objects(done) == [result_path(done)]
    assert blobs.job_objects(failed) == []
    assert (report.jobs, report.orphans, report.young, report.finished) == (6, 1, 1, 2)
    assert (report.objects, report.failed) == (4 + 3 + 2, 0)
    assert sweep(store, blobs, GRACE).objects == 0  # nothing more the second time


def test_an_orphan_goes_once_it_is_older_than_the_grace(store: JobStore, blobs: BlobStore) -> None:
    orphan = new_job_id()
    put_all(blobs, orphan, result=True)
    assert sweep(store, blobs, GRACE).objects == 0
    later = datetime.now(UTC).timestamp() + GRACE + 1
    assert sweep(store, blobs, GRACE, datetime.fromtimestamp(later, UTC)).orphans == 1
    assert blobs.job_objects(orphan) == [] and blobs.jobs() == {}


def test_one_worker_sweeps_an_interval_the_one_that_takes_the_lock(store: JobStore, blobs: BlobStore) -> None:
    first = context_of(store, blobs, "worker-1", sweep_interval_seconds=600, sweep_grace_seconds=GRACE)
    second = context_of(store, blobs, "worker-2", sweep_interval_seconds=600, sweep_grace_seconds=GRACE)
    orphan, later = new_job_id(), new_job_id()
    put_all(blobs, orphan)
    age(blobs, orphan, GRACE + 60)
    thread = start_sweep(first, None)
    assert thread is not None
    thread.join(HANG)
    assert blobs.job_objects(orphan) == []
    assert store.redis.get(SWEEP_LOCK_KEY) == b"worker-1"
    assert 0 < store.redis.pttl(SWEEP_LOCK_KEY) <= 600_000  # it lapses by itself after the interval
    put_all(blobs, later)
    age(blobs, later, GRACE + 60)
    assert start_sweep(second, None) is None  # the interval is the first worker's
    assert start_sweep(first, None) is None  # its own too: one sweep an interval
    assert sorted(blobs.job_objects(later)) == sorted([content_path(later), style_path(later, 0)])
    store.redis.delete(SWEEP_LOCK_KEY)  # the interval is over
    thread = start_sweep(second, None)
    assert thread is not None
    thread.join(HANG)
    assert blobs.job_objects(later) == []
    assert store.redis.get(SWEEP_LOCK_KEY) == b"worker-2"


def test_a_failing_sweep_is_logged_and_the_heartbeat_goes_on(
    store: JobStore, blobs: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    assert blobs.root is not None
    shutil.rmtree(blobs.root)
    blobs.root.write_bytes(b"a file where the store's folder must be: every listing fails")
    context = context_of(
        store, blobs, "worker-1", worker_heartbeat_seconds=0.05, sweep_interval_seconds=0.05, sweep_grace_seconds=0
    )
    caplog.set_level(logging.WARNING, logger="worker.sweeper")
    stop = start_heartbeat(context)
    try:
        deadline = time.monotonic() + HANG
        while sum("sweep failed" in r.getMessage() for r in caplog.records) < 2:
            assert time.monotonic() < deadline, "the sweep never ran twice"
            time.sleep(0.05)
        beat = store.redis.zscore(WORKERS_KEY, "worker-1")
        assert beat is not None
        while store.redis.zscore(WORKERS_KEY, "worker-1") == beat:  # a heartbeat after the failures
            assert time.monotonic() < deadline, "the heartbeat stopped"
            time.sleep(0.05)
    finally:
        stop.set()
