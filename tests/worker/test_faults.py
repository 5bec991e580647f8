"""Faults with real processes: workers killed mid-job, Redis and the API restarted, jobs that
fail or run too long. Every accepted job ends exactly once, with its result or a clear error."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from jobs.blobs import BlobStore, content_path
from jobs.store import JobStore
from tests.conftest import SAMPLES
from tests.services import HANG, Service, StartService, is_final, poll, submit
from worker.local import start_redis, stop_processes, wait_for_http

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
TINY = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    # A short lease: a killed worker's job is requeued within seconds. It cannot lapse under a live
    # worker however slow the machine: the one heartbeat thread renews it before it reaps.
    return start_service({"NST_LEASE_SECONDS": "3", "NST_CHECKPOINT_EVERY": "20", "NST_MAX_ATTEMPTS": "2"})


@pytest.fixture
def store(service: Service) -> JobStore:
    return JobStore.from_url(service.redis_url, 3600)


def kill_worker(service: Service) -> None:
    worker = service.workers.pop()
    worker.send_signal(signal.SIGKILL)
    worker.wait()


def never_backwards(seen: list[dict]) -> None:
    iterations = [j["progress"]["iteration"] for j in seen]
    assert iterations == sorted(iterations), iterations
    counts = [len(j["snapshots"]) for j in seen]
    assert counts == sorted(counts), counts


def test_a_killed_worker_s_job_resumes_from_its_checkpoint_on_the_next_worker(
    service: Service, client: httpx.Client, store: JobStore
) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 120, **TINY}).json()
    seen: list[dict] = []
    poll(client, job["id"], lambda j: j["progress"]["iteration"] >= 60, seen=seen)
    kill_worker(service)
    killed_at = client.get(f"/jobs/{job['id']}").json()
    assert killed_at["status"] == "running"
    service.start_worker()
    done = poll(client, job["id"], is_final, seen=seen)
    assert done["status"] == "succeeded", service.logs()
    assert store.completions(job["id"]) == 1
    assert store.get(job["id"]).attempts == 2  # type: ignore[union-attr]
    never_backwards(seen)
    assert [s["iteration"] for s in done["snapshots"]] == [1, 50, 100]
    assert "resuming from the checkpoint at iteration" in service.logs(tail=0)
    assert client.get(done["result_url"]).status_code == 200


def test_a_job_that_keeps_killing_its_worker_fails_after_max_attempts(
    service: Service, client: httpx.Client, store: JobStore
) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 20000, **TINY}).json()
    for attempt in (1, 2):
        deadline = time.monotonic() + HANG
        while (record := store.get(job["id"])) is None or record.attempts < attempt or record.status != "running":
            assert time.monotonic() < deadline, f"attempt {attempt} never started"
            time.sleep(0.1)
        kill_worker(service)
        service.start_worker()
    done = poll(client, job["id"], is_final)
    assert done["status"] == "failed" and done["error"]["type"] == "/problems/worker-lost"
    assert "2 times" in done["error"]["detail"]
    assert store.completions(job["id"]) == 0


def test_a_job_past_the_time_limit_fails_cleanly_and_the_worker_goes_on(start_service: StartService) -> None:
    # A stack of its own: under this limit a job of 20000 iterations cannot end, one of two always
    # does (only a hang makes it take 30 s); the other tests' jobs run without a limit that a slow
    # machine could reach.
    stack = start_service({"NST_JOB_TIMEOUT_SECONDS": "30"})
    try:
        with httpx.Client(base_url=stack.url, timeout=30) as client:
            slow = submit(client, COFFEE, [STARRY], {"iterations": 20000, **TINY}).json()
            after = submit(client, COFFEE, [STARRY], {"iterations": 2, **TINY}).json()
            done = poll(client, slow["id"], is_final)
            assert done["status"] == "failed" and done["error"]["type"] == "/problems/timeout"
            assert "time limit" in done["error"]["detail"]
            no_result = client.get(f"/jobs/{slow['id']}/result").json()
            assert no_result["status"] == 409 and no_result["type"] == "/problems/no-result"
            assert no_result["detail"].startswith("the job failed: the job ran past the time limit")
            assert poll(client, after["id"], is_final)["status"] == "succeeded", stack.logs()
    finally:
        stack.stop()


def test_a_job_whose_input_breaks_fails_readably_and_the_worker_takes_the_next(
    service: Service, client: httpx.Client, store: JobStore
) -> None:
    busy = submit(client, COFFEE, [STARRY], {"iterations": 20000, **TINY}).json()
    poll(client, busy["id"], lambda j: j["status"] == "running")
    broken = submit(client, COFFEE, [STARRY], {"iterations": 2, **TINY}).json()
    BlobStore(str(service.root / "blobs")).put(content_path(broken["id"]), b"garbage that was an image")  # damaged
    following = submit(client, COFFEE, [STARRY], {"iterations": 2, **TINY}).json()
    client.post(f"/jobs/{busy['id']}/cancel")
    failed = poll(client, broken["id"], is_final)
    assert failed["status"] == "failed" and "not an image" in failed["error"]["detail"]
    assert poll(client, following["id"], is_final)["status"] == "succeeded"
    assert all(w.poll() is None for w in service.workers)


def test_redis_restarted_with_jobs_queued_and_running_loses_none(
    service: Service, client: httpx.Client, store: JobStore
) -> None:
    running = submit(client, COFFEE, [STARRY], {"iterations": 60, **TINY}).json()
    queued = [submit(client, COFFEE, [STARRY], {"iterations": 30, **TINY}).json() for _ in range(2)]
    poll(client, running["id"], lambda j: j["progress"]["iteration"] >= 10)
    assert service.redis is not None
    stop_processes([service.redis])  # SIGTERM: Redis writes its append-only file and exits
    away = client.get(f"/jobs/{running['id']}")
    assert away.status_code == 503 and away.headers["content-type"].startswith("application/problem+json")
    assert client.get("/healthz").status_code == 200
    time.sleep(2)
    service.redis = start_redis(service.redis_port, service.root / "redis", service.root / "redis.log")
    for job in (running, *queued):
        done = poll(client, job["id"], is_final)
        assert done["status"] == "succeeded", (done, service.logs())
        assert store.completions(job["id"]) == 1
    service.wait_ready(1)
    # The worker took its lapsed lease back after the restart: nothing was run a second time.
    logs = service.logs(tail=0)
    assert f"job {running['id']}: its worker stopped answering" not in logs
    assert f"job {running['id']}: finished, but another run held it" not in logs


def test_an_api_restart_mid_job_changes_nothing_for_the_job(
    service: Service, client: httpx.Client, store: JobStore
) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 60, **TINY}).json()
    poll(client, job["id"], lambda j: j["status"] == "running")
    assert service.api is not None
    service.api.send_signal(signal.SIGKILL)
    service.api.wait()
    service.start_api()
    wait_for_http(f"{service.url}/healthz")
    with httpx.Client(base_url=service.url, timeout=30) as fresh:
        done = poll(fresh, job["id"], is_final)
    assert done["status"] == "succeeded" and store.completions(job["id"]) == 1


def test_cancel_answers_are_defined_in_every_state(client: httpx.Client) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 1, **TINY}).json()
    done = poll(client, job["id"], is_final)
    assert done["status"] == "succeeded"
    answer = client.post(f"/jobs/{job['id']}/cancel")
    assert answer.status_code == 409 and answer.json()["type"] == "/problems/already-finished"
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "succeeded"  # unchanged


def test_cancel_racing_completion_ends_one_way_or_the_other_never_both(client: httpx.Client, store: JobStore) -> None:
    for iterations in (1, 3, 8):
        job = submit(client, COFFEE, [STARRY], {"iterations": iterations, **TINY}).json()
        poll(client, job["id"], lambda j: j["status"] != "queued")
        answer = client.post(f"/jobs/{job['id']}/cancel")
        assert answer.status_code in (202, 409)  # 409 only if it had already succeeded
        done = poll(client, job["id"], is_final)
        result = client.get(f"/jobs/{job['id']}/result")
        if done["status"] == "succeeded":
            assert result.status_code == 200 and store.completions(job["id"]) == 1
        else:
            assert done["status"] == "canceled" and result.status_code == 409
            assert answer.status_code == 202
