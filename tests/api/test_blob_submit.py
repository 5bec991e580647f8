"""A submission's uploads go to the blob store (the stack's own directory), none of their bytes to
Redis, and the job runs from there. A refused submission leaves no object; Redis past its
high-water mark (503) and a full store (507) are answered before anything is stored; a job the
broker refuses after its objects were written leaves neither objects nor keys."""

from __future__ import annotations

import io
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import httpx
import pytest
import redis
from celery import Celery
from PIL import Image
from starlette.datastructures import UploadFile

from api.problems import Problem
from api.redis_room import ROOM_CACHE_SECONDS
from api.routes.jobs import accept_job
from jobs.blobs import BlobStore
from jobs.keys import JOBS_KEY, OPEN_TENANT, QUEUE_KEY, content_key, style_key
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.tenancy import Limits, TenantLimits
from tests.conftest import gradient_image
from tests.services import Service, StartService, is_final, poll
from worker.local import free_port

TINY = {"iterations": 2, "height": 16, "width": 16}
HIGH_WATER = 0.5  # NST_REDIS_HIGH_WATER of the stack below


def encode(img: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


PHOTO = encode(gradient_image(300, 200), "PNG")  # noisy: about 180 KB, far more than a job's keys
PAINTING = encode(gradient_image(30, 30, seed=4), "JPEG")
SKETCH = encode(gradient_image(20, 30, seed=5), "PNG")


def post(client: httpx.Client, content: bytes, styles: list[bytes], params: Any = TINY) -> httpx.Response:
    files = [("content", ("photo.png", content))] + [("style", (f"s{i}", style)) for i, style in enumerate(styles)]
    return client.post("/jobs", files=files, data={"params": json.dumps(params)})


def objects(root: Path) -> dict[str, dict[str, bytes]]:
    """Job id -> its objects (name -> bytes) in a directory blob store."""
    jobs = root / "jobs"
    if not jobs.exists():
        return {}
    return {job.name: {item.name: item.read_bytes() for item in job.iterdir()} for job in jobs.iterdir()}


@pytest.fixture(scope="module")
def stack(start_service: StartService) -> Service:
    """No worker until a test starts one; one queued job fills the queue."""
    return start_service({"NST_MAX_QUEUED_JOBS": "1", "NST_REDIS_HIGH_WATER": str(HIGH_WATER)}, workers=0)


@pytest.fixture(scope="module")
def client(stack: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        yield http


@pytest.fixture(scope="module")
def db(stack: Service) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


def assert_problem(answer: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["type"] == f"/problems/{kind}", body
    return body


def test_a_refused_submission_leaves_no_object(stack: Service, client: httpx.Client, db: redis.Redis) -> None:
    blobs = stack.root / "blobs"
    before = objects(blobs)
    bad_second_style = post(client, PHOTO, [PAINTING, b"GIF89a not really"])
    assert_problem(bad_second_style, 415, "not-an-image")
    assert bad_second_style.json()["errors"][0]["field"] == "style[1]"
    assert_problem(post(client, PHOTO, [PAINTING], {"iterations": 0}), 422, "invalid-request")
    assert objects(blobs) == before
    first = post(client, PHOTO, [PAINTING])
    assert first.status_code == 202, first.text
    try:
        assert set(objects(blobs)) == {*before, first.json()["id"]}
        assert_problem(post(client, PHOTO, [PAINTING]), 429, "queue-full")  # the one queued job fills it
        assert set(objects(blobs)) == {*before, first.json()["id"]}
        assert db.zcard(JOBS_KEY) == len(before) + 1
    finally:
        client.post(f"/jobs/{first.json()['id']}/cancel")


def test_a_submission_keeps_its_uploads_in_the_blob_store_and_none_in_redis(
    stack: Service, client: httpx.Client, db: redis.Redis
) -> None:
    answer = post(client, PHOTO, [PAINTING, SKETCH])
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert objects(stack.root / "blobs")[job_id] == {"content": PHOTO, "style-0": PAINTING, "style-1": SKETCH}
    record = JobStore(db, 3600).get(job_id)
    assert record is not None and record.blobs and record.input_bytes == len(PHOTO) + len(PAINTING) + len(SKETCH)
    assert db.exists(content_key(job_id), style_key(job_id, 0), style_key(job_id, 1)) == 0
    held = {key: int(db.memory_usage(key) or 0) for key in db.scan_iter(match=f"*{job_id}*")}
    assert sum(held.values()) < len(PHOTO) // 4, held  # the record and its event: no picture
    # What the job holds for its tenant is its uploads' size, wherever they are.
    limits = TenantLimits(db, 3600, Limits(None, 1000, 10**12))
    assert limits.held_bytes(OPEN_TENANT) >= record.input_bytes

    stack.start_worker()
    stack.wait_ready(1)
    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded", (done, stack.logs())
    assert client.get(f"/jobs/{job_id}/result").headers["content-type"] == "image/png"


def test_redis_past_its_high_water_mark_is_503_before_anything_is_stored(
    stack: Service, client: httpx.Client, db: redis.Redis
) -> None:
    blobs = stack.root / "blobs"
    before_objects, before_jobs = set(objects(blobs)), db.zcard(JOBS_KEY)
    original = str(db.config_get("maxmemory")["maxmemory"])
    used = int(db.info("memory")["used_memory"])
    db.config_set("maxmemory", int(used * 1.5))  # room left for writes, but past HIGH_WATER of it
    try:
        time.sleep(ROOM_CACHE_SECONDS)  # the API's last reading of Redis's memory is stale by then
        answer = post(client, PHOTO, [PAINTING])
        body = assert_problem(answer, 503, "service-full")
        assert answer.headers["retry-after"] == "60"
        assert body["maxmemory"] == int(used * 1.5) and body["used_memory"] > HIGH_WATER * body["maxmemory"]
        assert str(body["maxmemory"]) in body["detail"] and "NST_REDIS_HIGH_WATER" in body["detail"]
        assert set(objects(blobs)) == before_objects and db.zcard(JOBS_KEY) == before_jobs
    finally:
        db.config_set("maxmemory", original)
    time.sleep(ROOM_CACHE_SECONDS)
    again = post(client, PHOTO, [PAINTING])
    assert again.status_code == 202, again.text  # room again once Redis has it
    client.post(f"/jobs/{again.json()['id']}/cancel")


def test_a_full_store_is_507_before_anything_is_stored(start_service: StartService) -> None:
    full = start_service({"NST_BLOB_MIN_FREE_BYTES": str(10**18)}, workers=0)
    with httpx.Client(base_url=full.url, timeout=60) as http:
        answer = post(http, PHOTO, [PAINTING])
    body = assert_problem(answer, 507, "storage-full")
    assert "bytes free" in body["detail"] and str(10**18) in body["detail"]
    assert objects(full.root / "blobs") == {}
    with redis.Redis.from_url(full.redis_url) as db:
        assert db.zcard(JOBS_KEY) == 0 and db.zcard(QUEUE_KEY) == 0
        limits = TenantLimits(db, 3600, Limits(None, 1000, 10**12))
        assert limits.held_bytes(OPEN_TENANT) == 0 and limits.active_jobs(OPEN_TENANT) == 0


# -- a failure after the objects are written -----------------------------------------------------


def spooled(data: bytes, name: str) -> UploadFile:
    """An upload as api.multipart hands it over: a spooled temporary file."""
    file = tempfile.SpooledTemporaryFile(max_size=1024)  # noqa: SIM115 - the UploadFile owns it
    file.write(data)
    file.seek(0)
    return UploadFile(cast(BinaryIO, file), filename=name)


def test_a_job_the_broker_refuses_leaves_no_object_and_no_key(redis_db: redis.Redis, tmp_path: Path) -> None:
    store = JobStore(redis_db, 3600)
    settings = Settings(blob_store=str(tmp_path / "blobs"), blob_min_free_bytes=0, redis_high_water=1.0)
    blobs = BlobStore(settings.blob_store)
    written: list[str] = []
    put = blobs.put

    def recording_put(path: str, data: Any) -> None:
        put(path, data)
        written.append(path)

    blobs.put = recording_put  # type: ignore[method-assign]  # to see that the objects were written at all
    nowhere = Celery("refused", broker=f"redis://127.0.0.1:{free_port()}/0")
    nowhere.conf.update(broker_connection_retry=False, broker_connection_max_retries=0, task_publish_retry=False)
    uploads = [spooled(PAINTING, "s0.jpg"), spooled(SKETCH, "s1.png")]
    with pytest.raises(Problem) as refused:
        accept_job(store, settings, nowhere, spooled(PHOTO, "c.png"), uploads, json.dumps(TINY), blobs=blobs)
    assert refused.value.kind == "unavailable" and refused.value.headers["Retry-After"] == "5"
    assert len(written) == 3  # stored, then removed
    assert blobs.jobs() == {} and list((tmp_path / "blobs").rglob("*")) in ([], [tmp_path / "blobs" / "jobs"])
    assert redis_db.keys("nst:job:*") == [] and redis_db.zcard(JOBS_KEY) == 0 and redis_db.zcard(QUEUE_KEY) == 0
    limits = TenantLimits(redis_db, 3600, Limits(None, 1000, 10**12))
    assert limits.held_bytes(OPEN_TENANT) == 0 and limits.active_jobs(OPEN_TENANT) == 0
