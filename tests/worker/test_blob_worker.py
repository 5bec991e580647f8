"""The worker's side of the blob store, with real processes: a job of this version runs from its
objects and leaves only its result there; a job of the previous version still runs from Redis; a
killed worker's job resumes from its checkpoint object; a result the store will not take fails
its job clearly and the worker goes on; a job deleted while it runs ends its run quietly."""

from __future__ import annotations

import io
import signal
import time
from collections.abc import Sequence

import httpx
import pytest
import redis
from PIL import Image

from core.params import StyleParams
from jobs.blobs import BlobStore, checkpoint_path, input_paths, result_path
from jobs.keys import PREFIX, cancel_key, checkpoint_key, content_key, job_key, result_key
from jobs.queue import make_celery_app, send_turn
from jobs.record import JobRecord, new_job_id
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.tenancy import Limits
from tests.conftest import SAMPLES
from tests.services import HANG, Service, StartService, is_final, poll
from worker.blob_io import RESULT_ATTEMPTS

COFFEE = (SAMPLES / "coffee.png").read_bytes()
STARRY = (SAMPLES / "starry_night.jpg").read_bytes()
TINY = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    # A short lease: a killed worker's job is requeued within seconds (as in test_faults).
    return start_service({"NST_LEASE_SECONDS": "3", "NST_CHECKPOINT_EVERY": "20", "NST_MAX_ATTEMPTS": "3"})


@pytest.fixture
def store(service: Service) -> JobStore:
    return JobStore.from_url(service.redis_url, 3600)


@pytest.fixture
def blobs(service: Service) -> BlobStore:
    return BlobStore(str(service.root / "blobs"))  # the stack's own store (tests/services.py)


def queue(
    service: Service, store: JobStore, record: JobRecord, content: bytes = b"", styles: Sequence[bytes] = ()
) -> str:
    """Store a job as the API does (its files already where they belong) and send its turn."""
    store.create(record, content, styles)
    send_turn(make_celery_app(Settings(redis_url=service.redis_url)), record.id)
    return record.id


def blob_job(service: Service, store: JobStore, blobs: BlobStore, iterations: int, job_id: str | None = None) -> str:
    """A job of this version: its inputs are objects, Redis holds none of their bytes."""
    record = JobRecord(
        id=job_id or new_job_id(),
        params=StyleParams.model_validate({"iterations": iterations, **TINY}).model_dump(),
        style_count=1,
        input_bytes=len(COFFEE) + len(STARRY),
        blobs=True,
    )
    for path, data in zip(input_paths(record.id, 1), (COFFEE, STARRY), strict=True):
        blobs.put(path, data)
    return queue(service, store, record)


def wait_for_log(service: Service, text: str) -> None:
    deadline = time.monotonic() + HANG
    while text not in service.logs(tail=0):
        assert time.monotonic() < deadline, f"never logged {text!r}:\n{service.logs()}"
        time.sleep(0.2)


def test_finish_counts_a_result_in_the_blob_store_for_its_tenant_and_stores_no_byte_in_redis(
    redis_db: redis.Redis,
) -> None:
    store = JobStore(redis_db, 3600)
    limits = store.tenant_limits(Limits(None, 100, 10**9))
    blob, legacy = new_job_id(), new_job_id()
    store.create(JobRecord(id=blob, params={"iterations": 5}, style_count=1, input_bytes=300, blobs=True))
    store.create(JobRecord(id=legacy, params={"iterations": 5}, style_count=1), b"c" * 100, [b"s" * 200])
    for job_id in (blob, legacy):
        assert limits.admit("~open", job_id, 300) is None
    assert limits.held_bytes("~open") == 600
    for job_id, token in ((blob, "run-a"), (legacy, "run-b")):
        assert store.claim(job_id, {"status": "running"}, token, 30)[0]
    assert store.finish(blob, "succeeded", {}, "run-a", result_bytes=1234)
    assert not redis_db.exists(result_key(blob))
    assert limits.held_bytes("~open") == 1234 + 300  # the inputs' bytes went, the result's came
    assert store.finish(legacy, "succeeded", {}, "run-b", b"p" * 66)
    assert redis_db.get(result_key(legacy)) == b"p" * 66  # a job of the previous version: as before
    assert limits.held_bytes("~open") == 1234 + 66


def test_a_job_runs_from_its_objects_and_leaves_only_its_result_there(
    service: Service, client: httpx.Client, store: JobStore, blobs: BlobStore
) -> None:
    job_id = blob_job(service, store, blobs, iterations=30)  # a checkpoint at 20 (NST_CHECKPOINT_EVERY)
    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded", service.logs()
    png = blobs.get(result_path(job_id))
    assert png is not None and Image.open(io.BytesIO(png)).size == Image.open(io.BytesIO(COFFEE)).size
    assert blobs.job_objects(job_id) == [result_path(job_id)]  # inputs and checkpoint gone with the run
    for key in (result_key(job_id), content_key(job_id), checkpoint_key(job_id)):
        assert not store.redis.exists(key), key
    assert store.completions(job_id) == 1
    answer = client.get(done["result_url"])
    assert answer.status_code == 200 and answer.content == png


def test_a_job_of_the_previous_version_still_runs_from_redis_and_is_served(
    service: Service, client: httpx.Client, store: JobStore, blobs: BlobStore
) -> None:
    params = StyleParams.model_validate({"iterations": 3, **TINY}).model_dump()
    record = JobRecord(id=new_job_id(), params=params, style_count=1)  # blobs=False: files in Redis
    job_id = queue(service, store, record, COFFEE, [STARRY])
    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded", service.logs()
    png = store.redis.get(result_key(job_id))
    assert isinstance(png, bytes) and png.startswith(b"\x89PNG")
    assert blobs.job_objects(job_id) == []  # nothing of it in the blob store
    answer = client.get(done["result_url"])
    assert answer.status_code == 200 and answer.content == png


def test_a_killed_worker_s_job_resumes_from_its_checkpoint_object(
    service: Service, client: httpx.Client, store: JobStore, blobs: BlobStore
) -> None:
    job_id = blob_job(service, store, blobs, iterations=120)
    poll(client, job_id, lambda j: j["progress"]["iteration"] >= 60)
    worker = service.workers.pop()
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    saved = blobs.get(checkpoint_path(job_id))
    assert saved is not None and not store.redis.exists(checkpoint_key(job_id))
    assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
    service.start_worker()
    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded", service.logs()
    assert "resuming from the checkpoint at iteration" in service.logs(tail=0)
    assert store.completions(job_id) == 1
    assert store.get(job_id).attempts == 2  # type: ignore[union-attr]
    assert blobs.job_objects(job_id) == [result_path(job_id)]


def test_a_result_the_store_will_not_take_fails_its_job_clearly_and_the_worker_runs_the_next(
    service: Service, client: httpx.Client, store: JobStore, blobs: BlobStore
) -> None:
    stuck = new_job_id()
    assert blobs.root is not None
    blocker = blobs.root / result_path(stuck)
    blocker.mkdir(parents=True)  # a directory where the result must go: no write can replace it
    (blocker / "in-the-way").write_bytes(b"x")
    blob_job(service, store, blobs, iterations=3, job_id=stuck)
    following = blob_job(service, store, blobs, iterations=3)
    failed = poll(client, stuck, is_final)
    assert failed["status"] == "failed", service.logs()
    assert failed["error"]["type"] == "/problems/storage-unavailable"
    assert failed["error"]["detail"].startswith(f"the result could not be stored in the blob store ({RESULT_ATTEMPTS}")
    assert store.completions(stuck) == 0 and not store.redis.exists(result_key(stuck))
    assert poll(client, following, is_final)["status"] == "succeeded", service.logs()
    assert all(w.poll() is None for w in service.workers)


def test_a_job_deleted_while_it_runs_ends_its_run_quietly(
    service: Service, client: httpx.Client, store: JobStore, blobs: BlobStore
) -> None:
    doomed = blob_job(service, store, blobs, iterations=20000)
    poll(client, doomed, lambda j: j["progress"]["iteration"] >= 25)  # a checkpoint object exists by now
    assert store.delete(doomed)  # as DELETE /jobs/{id} does: the job goes, its run is told to stop
    wait_for_log(service, f"job {doomed}: deleted while it ran; this run stops without writing")
    blobs.delete_job(doomed)
    following = blob_job(service, store, blobs, iterations=3)
    assert poll(client, following, is_final)["status"] == "succeeded", service.logs()
    # The stopped run wrote nothing back: no key of the job but the deleter's stop flag, no object.
    left = {key.decode() for key in store.redis.scan_iter(f"{PREFIX}:job:{doomed}*")}
    assert left <= {cancel_key(doomed)}, left
    assert not store.redis.exists(job_key(doomed)) and blobs.job_objects(doomed) == []
    assert all(w.poll() is None for w in service.workers)
