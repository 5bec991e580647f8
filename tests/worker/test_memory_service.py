"""Memory budgets and coarse-to-fine through the real service: Redis, a worker and the API."""

from __future__ import annotations

import io
import signal
import time

import httpx
import pytest
from PIL import Image

from core.output import read_metadata
from tests.conftest import SAMPLES
from tests.services import HANG, Service, StartService, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"  # 600x400
STARRY = SAMPLES / "starry_night.jpg"
BUDGET = 200_000_000  # a 64x64 job needs about 20 MB; a 2048x2048 one gigabytes
TWO_SCALES = {"scales": [{"size": 32, "iterations": 30}, {"size": 64, "iterations": 30}], "height": 64, "width": 64}


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    return start_service({"NST_MEMORY_BUDGET_BYTES": str(BUDGET)})


def test_workers_report_their_budget_and_a_job_none_can_hold_is_422_at_submit(
    service: Service, client: httpx.Client
) -> None:
    from jobs.store import JobStore

    store = JobStore.from_url(service.redis_url, 60)
    (report,) = store.worker_registry(5).live().values()
    assert {key: report[key] for key in ("device", "device_type", "precision", "memory_budget_bytes", "compile")} == {
        "device": "cpu", "device_type": "cpu", "precision": "fp32", "memory_budget_bytes": BUDGET, "compile": False,
    }  # fmt: skip
    # Not calibrated (the test stacks' NST_CALIBRATE=0): the written constants, every check skipped.
    assert report["memory_model"]["source"] == "written" and "ms_per_iteration" not in report
    assert {check["outcome"] for check in report["calibration"].values()} == {"skipped"}
    before = client.get("/jobs").json()["items"]
    answer = submit(client, COFFEE, [STARRY], {"height": 2048, "width": 2048, "iterations": 2})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["type"] == "/problems/too-much-memory"
    assert "2048x2048" in problem["detail"] and "200 MB" in problem["detail"]
    assert "the largest memory budget among the live workers" in problem["detail"]
    assert problem["memory_budget_bytes"] == BUDGET and problem["memory_needed_bytes"] > BUDGET
    assert client.get("/jobs").json()["items"] == before  # nothing stored, nothing queued


def test_a_two_scale_job_goes_coarse_to_fine_with_snapshots_at_the_content_s_size(
    service: Service, client: httpx.Client
) -> None:
    job = submit(client, COFFEE, [STARRY], {**TWO_SCALES, "seed": 7}).json()
    assert job["params"]["iterations"] == 60 and job["progress"]["total"] == 60
    seen: list[dict] = []
    done = poll(client, job["id"], is_final, seen=seen)
    assert done["status"] == "succeeded", done
    assert [s["iteration"] for s in done["snapshots"]] == [1, 50]
    assert done["progress"] == {
        "iteration": 60, "total": 60, "fraction": 1.0, "scale": {"index": 2, "count": 2, "height": 64, "width": 64},
    }  # fmt: skip
    assert done["checkpointing"] is False and 0 < done["memory_bytes"] < BUDGET
    for iteration in (1, 50):
        snapshot = Image.open(io.BytesIO(client.get(f"/jobs/{job['id']}/snapshots/{iteration}").content))
        assert snapshot.size == (600, 400) and read_metadata(snapshot)["checkpointing"] == "false"
    result = Image.open(io.BytesIO(client.get(done["result_url"]).content))
    assert result.size == (600, 400) and read_metadata(result)["checkpointing"] == "false"
    # The second stage starts from the first one's picture: its first loss is far below noise's.
    fresh = submit(client, COFFEE, [STARRY], {"iterations": 1, "height": 64, "width": 64, "seed": 7}).json()
    assert poll(client, fresh["id"], is_final)["status"] == "succeeded"
    history = client.get(f"/jobs/{job['id']}/losses").json()
    first_at_64 = next(t for i, t in zip(history["iteration"], history["total"], strict=True) if i > 30)
    fresh_start = client.get(f"/jobs/{fresh['id']}/losses").json()["total"][0]
    assert first_at_64 < 0.5 * fresh_start, (first_at_64, fresh_start)


def test_a_too_big_job_that_reaches_a_worker_fails_readably_and_the_worker_takes_the_next(
    service: Service, client: httpx.Client
) -> None:
    # No live worker: the API cannot tell, so it queues the job (as one queued before a worker
    # with less memory started).
    worker = service.workers.pop()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=HANG)
    deadline = time.monotonic() + HANG
    while client.get("/readyz").status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get("/readyz").status_code == 503, "the stopped worker still counts as alive"
    big = submit(client, COFFEE, [STARRY], {"height": 2048, "width": 2048, "iterations": 2})
    assert big.status_code == 202, big.text
    small = submit(client, COFFEE, [STARRY], {"height": 64, "width": 64, "iterations": 3}).json()
    service.start_worker()
    failed = poll(client, big.json()["id"], is_final)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "/problems/too-much-memory" and failed["error"]["status"] == 422
    detail = failed["error"]["detail"]
    assert "2048x2048" in detail and "needs about" in detail and "this worker's memory budget of 200 MB" in detail
    assert poll(client, small["id"], is_final)["status"] == "succeeded"
    assert all(w.poll() is None for w in service.workers)


def test_a_job_over_the_budget_runs_with_checkpointing_and_says_so(service: Service, client: httpx.Client) -> None:
    # 304x304: about 230 MB plainly, about 165 MB with checkpointing (core.memory).
    job = submit(client, COFFEE, [STARRY], {"height": 304, "width": 304, "iterations": 2}).json()
    done = poll(client, job["id"], is_final)
    assert done["status"] == "succeeded", done
    assert done["checkpointing"] is True and done["memory_bytes"] <= BUDGET
    snapshot = Image.open(io.BytesIO(client.get(f"/jobs/{job['id']}/snapshots/1").content))
    assert read_metadata(snapshot)["checkpointing"] == "true"
    result = Image.open(io.BytesIO(client.get(done["result_url"]).content))
    assert read_metadata(result)["checkpointing"] == "true"
