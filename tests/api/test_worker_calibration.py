"""What workers measure on their device at start, as the API uses and shows it: admission with a
worker's own memory constants, `/metrics`, `/readyz` and a queued job's ETA. The workers here are
heartbeats written straight into the stack's Redis (no worker process runs), so every job stays
queued and each report says exactly what a test needs, old and malformed ones included."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from core.memory import Calibration, JobTooBig, MemoryModel, fit_job
from core.params import StyleParams
from jobs.workers import WorkerRegistry
from tests.conftest import gradient_image
from tests.services import Service, StartService, poll, settle

CONTENT = (40, 48)  # (height, width) of the uploaded content image
BIG = 1 << 40


def png(width: int, height: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    gradient_image(width, height, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


PHOTO = png(CONTENT[1], CONTENT[0], 1)
PAINTING = png(30, 30, 4)

CALIBRATED = {
    "memory": {"calibrated": True, "outcome": "measured", "detail": "fitted to peaks at 3 sizes"},
    "speed": {"calibrated": True, "outcome": "measured", "detail": "20 iterations at 384x512"},
    "precision": {"calibrated": False, "outcome": "skipped", "detail": "fp32 on the CPU: nothing to compare"},
    "compile": {"calibrated": False, "outcome": "failed", "detail": "compiling raised; serving eager"},
    "batch": {"calibrated": True, "outcome": "batched", "detail": "batches of 4 up to 64x64: 1.36x"},
}
MALFORMED: dict[str, Any] = {
    "ms_per_iteration": "fast",
    "speed_size": [384],
    "compile": "yes",
    "memory_model": {"plain": 3},
    "batch": {"max_batch": True, "max_pixels": -4},
    "calibration": {
        "memory": "yes",
        "speed": {"calibrated": "true", "outcome": "measured", "detail": 1},
        "precision": {"calibrated": True, "outcome": 5, "detail": "x"},
        "compile": None,
    },
}


def cpu_worker(budget: int = BIG, **report: Any) -> dict[str, Any]:
    """A heartbeat's report as an earlier worker sent it, plus `report`."""
    return {"device": "cpu", "device_type": "cpu", "precision": "fp32", "memory_budget_bytes": budget, **report}


def model(scale: float) -> dict[str, object]:
    return MemoryModel(Calibration(scale, 5_000_000), Calibration(scale, 11_000_000), "measured").report()


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    # No worker process; a fake heartbeat stays live for three periods: hours, at this period.
    return start_service({"NST_WORKER_HEARTBEAT_SECONDS": "3600"}, workers=0)


@pytest.fixture
def workers(service: Service) -> Iterator[WorkerRegistry]:
    """The stack's worker registry, with no live worker; the test's workers and jobs go after it."""
    client = redis.Redis.from_url(service.redis_url)
    registry = WorkerRegistry(client, 3600)

    def clear() -> None:
        for name in registry.live():
            registry.remove(name)

    clear()
    try:
        yield registry
    finally:
        clear()
        settle(service)
        client.close()


def submit(client: httpx.Client, params: dict[str, Any]) -> httpx.Response:
    files = [("content", ("photo.png", PHOTO)), ("style", ("painting.png", PAINTING))]
    return client.post("/jobs", files=files, data={"params": json.dumps(params)})


def fits(params: StyleParams, budget: int, scale: float | None = None) -> bool:
    """Whether core.memory admits the job on one fp32 CPU worker (its written constants, or `scale`)."""
    measured = MemoryModel.from_report(model(scale)) if scale is not None else None
    try:
        fit_job(params, CONTENT, budget, device_type="cpu", precision="fp32", model=measured)
    except JobTooBig:
        return False
    return True


def test_admission_uses_each_worker_s_own_memory_constants(client: httpx.Client, workers: WorkerRegistry) -> None:
    params = {"iterations": 1, "height": 256, "width": 256}
    style = StyleParams.model_validate(params)
    # The least budget the written constants admit the job in (plainly): a worker that measured
    # that its device needs three times as much refuses it, with checkpointing too.
    plain = fit_job(style, CONTENT, BIG, device_type="cpu", precision="fp32").bytes
    assert fits(style, plain) and not fits(style, plain, scale=3.0)
    for report, accepted in ((cpu_worker(plain), True), (cpu_worker(plain, memory_model=model(3.0)), False)):
        workers.heartbeat("w1:1", report)
        answer = submit(client, params)
        if accepted:
            assert answer.status_code == 202, answer.text
        else:
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"] == "/problems/too-much-memory"
            assert answer.json()["memory_budget_bytes"] == plain
    # A budget the written constants refuse even with checkpointing, which a device that measured
    # a third of their scale holds; a malformed model counts as the written constants.
    lean = fit_job(style, CONTENT, plain - 1, device_type="cpu", precision="fp32").bytes  # checkpointed
    tight = lean - 1
    assert not fits(style, tight) and fits(style, tight, scale=0.33)
    cases = [
        (cpu_worker(tight), 422),
        (cpu_worker(tight, memory_model={"plain": {"scale": "big"}}), 422),
        (cpu_worker(tight, memory_model=model(0.33)), 202),
    ]
    for report, status in cases:
        workers.heartbeat("w1:1", report)
        answer = submit(client, params)
        assert answer.status_code == status, (report, answer.text)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_show_each_worker_s_speed_and_calibration_and_leave_out_what_makes_no_sense(
    client: httpx.Client, workers: WorkerRegistry
) -> None:
    workers.heartbeat("new:1", cpu_worker(ms_per_iteration=123.5, speed_size=[384, 512], calibration=CALIBRATED))
    workers.heartbeat("bad:2", cpu_worker(**MALFORMED))
    workers.heartbeat("old:3", cpu_worker())
    answer = client.get("/metrics")
    assert answer.status_code == 200
    found = samples(answer.text)
    speeds = {labels: value for (name, labels), value in found.items() if name == "nst_worker_ms_per_iteration"}
    assert speeds == {frozenset({("worker", "new:1"), ("size", "384x512")}): 123.5}
    checks = {
        (dict(labels)["worker"], dict(labels)["what"], dict(labels)["outcome"]): value
        for (name, labels), value in found.items()
        if name == "nst_worker_calibrated"
    }
    assert checks == {
        ("new:1", "memory", "measured"): 1.0,
        ("new:1", "speed", "measured"): 1.0,
        ("new:1", "precision", "skipped"): 0.0,
        ("new:1", "compile", "failed"): 0.0,
        ("new:1", "batch", "batched"): 1.0,
    }
    infos = {dict(labels)["worker"] for (name, labels), _ in found.items() if name == "nst_worker_info"}
    assert infos == {"new:1", "bad:2", "old:3"}  # the malformed and the old are still there


def test_readyz_lists_the_live_workers_with_what_each_measured(client: httpx.Client, workers: WorkerRegistry) -> None:
    assert client.get("/readyz").status_code == 503
    report = cpu_worker(
        ms_per_iteration=123.5,
        speed_size=[384, 512],
        compile=False,
        memory_model=model(1.1),
        calibration=CALIBRATED,
        batch={"max_batch": 4, "max_pixels": 4096, "source": "measured"},
    )
    workers.heartbeat("new:1", report)
    workers.heartbeat("bad:2", cpu_worker(**MALFORMED))
    workers.heartbeat("old:3", cpu_worker())
    answer = client.get("/readyz")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["redis"] == "ok" and body["workers"] == 3
    assert [w["name"] for w in body["live_workers"]] == ["bad:2", "new:1", "old:3"]
    bad, new, old = body["live_workers"]
    assert new == {
        "name": "new:1",
        "device": "cpu",
        "precision": "fp32",
        "compile": False,
        "memory_budget_bytes": BIG,
        "memory_model": "measured",
        "ms_per_iteration": 123.5,
        "speed_size": {"height": 384, "width": 512},
        "max_batch": 4,
        "batch_max_pixels": 4096,
        "calibration": CALIBRATED,
    }
    unknown = {"calibrated": None, "outcome": None, "detail": None}
    for entry in (bad, old):
        assert entry["device"] == "cpu" and entry["precision"] == "fp32" and entry["memory_budget_bytes"] == BIG
        assert entry["compile"] is None and entry["memory_model"] is None
        assert entry["ms_per_iteration"] is None and entry["speed_size"] is None
        assert entry["max_batch"] is None and entry["batch_max_pixels"] is None
    assert old["calibration"] == {what: unknown for what in CALIBRATED}
    # Of the malformed checks, each value that makes sense is kept, the rest is null.
    assert bad["calibration"] == {
        "memory": unknown,
        "speed": {"calibrated": None, "outcome": "measured", "detail": None},
        "precision": {"calibrated": True, "outcome": None, "detail": "x"},
        "compile": unknown,
        "batch": unknown,
    }


def test_a_queued_job_s_eta_comes_from_the_live_workers_measured_speeds(
    client: httpx.Client, workers: WorkerRegistry
) -> None:
    params = {"iterations": 100, "height": 384, "width": 512}
    workers.heartbeat("old:1", cpu_worker())  # live, but it measured nothing
    first = submit(client, params).json()
    poll(client, first["id"], lambda job: job["queue_position"] == 1 and job["eta_seconds"] is None)
    unmeasured = client.get(f"/jobs/{first['id']}")
    assert unmeasured.json()["eta_seconds"] is None
    # 1000 ms an iteration at this very size: 100 s to run, and nothing ahead.
    workers.heartbeat("fast:2", cpu_worker(ms_per_iteration=1000.0, speed_size=[384, 512]))
    assert poll(client, first["id"], lambda job: job["eta_seconds"] is not None)["eta_seconds"] == 100.0
    # The ETag hashes the answer: the one from before the ETA is no longer current, the new one is.
    answer = client.get(f"/jobs/{first['id']}", headers={"If-None-Match": unmeasured.headers["etag"]})
    assert answer.status_code == 200 and answer.json()["eta_seconds"] == 100.0
    assert client.get(f"/jobs/{first['id']}", headers={"If-None-Match": answer.headers["etag"]}).status_code == 304
    second = submit(client, params).json()
    assert poll(client, second["id"], lambda job: job["eta_seconds"] is not None)["eta_seconds"] == 200.0
    # A slower worker, which measured a quarter of the pixels at 3000 ms: 1200 s for this job. The
    # mean run is 650 s; the second job waits for half a run (two workers share the queue).
    workers.heartbeat("slow:3", cpu_worker(ms_per_iteration=3000.0, speed_size=[192, 256]))
    assert poll(client, second["id"], lambda job: job["eta_seconds"] != 200.0)["eta_seconds"] == 975.0
    assert client.get(f"/jobs/{first['id']}").json()["eta_seconds"] == 650.0
    workers.remove("fast:2")
    workers.remove("slow:3")
    poll(client, first["id"], lambda job: job["eta_seconds"] is None)
