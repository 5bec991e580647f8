"""`GET /metrics`: Prometheus' text format, HTTP requests by route template, and the service's job
and worker metrics kept in Redis (jobs/telemetry.py), each job counted once at its end."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from api.metrics import UNMATCHED, ClusterCollector, HttpMetrics, HttpMetricsMiddleware
from jobs import telemetry
from jobs.keys import lease_key
from jobs.record import JobRecord, new_job_id
from jobs.store import JobStore
from tests.conftest import SAMPLES
from tests.services import HANG, Service, is_final, poll, submit
from worker.local import free_port

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels (parsing it is part of the test)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- Redis-backed counters and histograms ------------------------------------------------------


@pytest.fixture
def db(redis_db: redis.Redis) -> redis.Redis:
    return redis_db


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it(db: redis.Redis) -> None:
    histogram = telemetry.RedisHistogram("test", [10, 1, 2.5])
    assert histogram.bounds == (1.0, 2.5, 10.0, math.inf)
    for seconds in (0.5, 1.0, 1.0001, 2.5, 11, 3600, -2):  # -2: a clock step back counts as 0
        histogram.observe(db, seconds)
    read = histogram.read(db)
    assert read.buckets == [(1.0, 3), (2.5, 5), (10.0, 5), (math.inf, 7)]  # cumulative, `le`
    assert read.count == 7
    assert read.sum == pytest.approx(0.5 + 1.0 + 1.0001 + 2.5 + 11 + 3600)


def test_a_histogram_read_ignores_buckets_it_does_not_have_and_starts_empty(db: redis.Redis) -> None:
    old = telemetry.RedisHistogram("test", [1, 5])
    new = telemetry.RedisHistogram("test", [1, 2])
    assert new.read(db).buckets == [(1.0, 0), (2.0, 0), (math.inf, 0)] and new.read(db).sum == 0
    old.observe(db, 4)  # lands in le=5, a bucket `new` has not
    new.observe(db, 0.5)
    assert new.read(db).buckets == [(1.0, 1), (2.0, 1), (math.inf, 1)]


def test_a_histogram_needs_finite_distinct_bounds() -> None:
    with pytest.raises(ValueError):
        telemetry.RedisHistogram("test", [1, 1])
    with pytest.raises(ValueError):
        telemetry.RedisHistogram("test", [math.inf])


def test_webhook_outcomes_are_counted_and_an_unknown_one_refused(db: redis.Redis) -> None:
    for outcome in ("delivered", "delivered", "retrying", "failed", "refused"):
        telemetry.record_webhook_delivery(db, outcome)
    with pytest.raises(ValueError):
        telemetry.record_webhook_delivery(db, "lost")
    counts = telemetry.read_totals(db).webhook_deliveries
    assert counts == {"delivered": 2, "retrying": 1, "failed": 1, "refused": 1}


def queued_job(store: JobStore) -> str:
    record = JobRecord(id=new_job_id(), params={"iterations": 10}, style_count=1)
    store.create(record, b"content", [b"style"])
    return record.id


def claim(store: JobStore, job_id: str, token: str, attempts: int = 1) -> None:
    fields = {"status": "running", "started_at": "2026-01-01T00:00:00.000Z", "attempts": attempts}
    assert store.claim(job_id, fields, token, 60)[0]


def test_each_final_status_is_counted_once_however_often_it_is_written(db: redis.Redis) -> None:
    store = JobStore(db, 60)
    done, stopped, waiting = queued_job(store), queued_job(store), queued_job(store)
    claim(store, done, "a")
    claim(store, stopped, "b")
    assert store.finish(done, "succeeded", {}, "a", b"png")
    assert store.finish(done, "succeeded", {}, "a", b"png")  # the same finish again (its reply lost)
    assert not store.finish(done, "succeeded", {}, "another run", b"png")  # a redelivered run's end
    assert store.finish(stopped, "canceled", {}, "b")
    assert store.cancel(waiting)[0] == "canceled"
    assert store.cancel(waiting)[0] == "unchanged"
    totals = telemetry.read_totals(db)
    assert totals.jobs == {"succeeded": 1, "failed": 0, "canceled": 2}
    assert totals.run_seconds.count == 2  # the jobs that ran; not the one canceled in the queue
    assert totals.run_seconds.sum > 0  # since 2026-01-01
    assert totals.queue_wait_seconds.count == 2


def test_a_job_whose_worker_died_is_counted_failed_once_and_waits_once(db: redis.Redis) -> None:
    store = JobStore(db, 60)
    job_id = queued_job(store)
    claim(store, job_id, "a")
    db.delete(lease_key(job_id))  # its worker died
    assert store.reap(max_attempts=2) == [(job_id, "requeued")]
    claim(store, job_id, "b", attempts=2)  # a second run: its wait is not a queue wait of a new job
    db.delete(lease_key(job_id))
    assert store.reap(max_attempts=2) == [(job_id, "failed")]
    assert store.reap(max_attempts=2) == []
    totals = telemetry.read_totals(db)
    assert totals.jobs == {"succeeded": 0, "failed": 1, "canceled": 0}
    assert totals.queue_wait_seconds.count == 1


def test_snapshots_are_counted_only_when_written(db: redis.Redis) -> None:
    store = JobStore(db, 60)
    job_id = queued_job(store)
    claim(store, job_id, "a")
    assert store.publish(job_id, "a", {"iteration": 1}, {}, snapshot=(1, b"jpeg"))
    assert store.publish(job_id, "a", {"iteration": 2}, {})  # progress only
    assert not store.publish(job_id, "stale", {"iteration": 50}, {}, snapshot=(50, b"jpeg"))
    assert telemetry.read_totals(db).snapshots == 1


def test_the_cluster_collector_renders_what_redis_holds(db: redis.Redis) -> None:
    store = JobStore(db, 60)
    queued_job(store)
    store.worker_registry(5).heartbeat("w1", {"device": "cuda:0", "device_type": "cuda", "precision": "bf16",
                           "memory_budget_bytes": 1000, "iterations_per_second": 12.5})  # fmt: skip
    store.worker_registry(5).heartbeat(
        "w2", {"device": "cpu", "device_type": "cpu", "precision": "fp32", "memory_budget_bytes": 10}
    )
    db.zadd("nst:workers", {"w2": time.time() - 3600})  # long silent: not alive
    telemetry.JOB_RUN_SECONDS.observe(db, 42)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(db, heartbeat_seconds=10 / 3))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "nst_redis_up") == 1
    assert value(samples, "nst_queue_depth") == 1
    assert value(samples, "nst_workers_alive") == 1
    info = {"worker": "w1", "device": "cuda:0", "device_type": "cuda", "precision": "bf16"}
    assert value(samples, "nst_worker_info", **info) == 1
    assert value(samples, "nst_worker_memory_budget_bytes", worker="w1") == 1000
    assert value(samples, "nst_worker_iterations_per_second", worker="w1") == 12.5
    assert value(samples, "nst_worker_memory_budget_bytes", worker="w2") is None
    assert value(samples, "nst_job_run_seconds_bucket", le="30.0") == 0
    assert value(samples, "nst_job_run_seconds_bucket", le="60.0") == 1
    assert value(samples, "nst_job_run_seconds_count") == 1 and value(samples, "nst_job_run_seconds_sum") == 42
    assert value(samples, "nst_jobs_total", status="failed") == 0


def test_without_redis_a_scrape_says_so_and_still_answers() -> None:
    registry = CollectorRegistry(auto_describe=False)
    unreachable = redis.Redis(port=free_port(), socket_connect_timeout=1)
    registry.register(ClusterCollector(unreachable, heartbeat_seconds=10 / 3))
    samples = parse(generate_latest(registry).decode())
    assert value(samples, "nst_redis_up") == 0
    assert value(samples, "nst_queue_depth") is None


# -- the HTTP middleware, on a small app of its own ---------------------------------------------


def small_app(opened: list[float | None]) -> tuple[Starlette, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = HttpMetrics(registry)

    async def item(request: Request) -> JSONResponse:
        return JSONResponse({"id": request.path_params["item_id"]})

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("boom")

    async def events(request: Request) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"
            await asyncio.sleep(0.05)
            # The stream is still open, and already counted.
            opened.append(registry.get_sample_value("nst_http_requests_total", {**STREAM, "status": "200"}))
            yield b"data: 2\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    routes = [Route("/items/{item_id}", item), Route("/boom", boom), Route("/events", events)]
    app = Starlette(routes=routes)
    app.add_middleware(HttpMetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app, registry


STREAM = {"method": "GET", "route": "/events"}


def test_requests_are_counted_by_route_template_method_and_status() -> None:
    opened: list[float | None] = []
    app, registry = small_app(opened)

    async def requests() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for item_id in ("a", "b", "c"):
                assert (await client.get(f"/items/{item_id}")).status_code == 200
            assert (await client.post("/items/a")).status_code == 405
            assert (await client.get("/nowhere/1")).status_code == 404
            assert (await client.request("BREW", "/items/a")).status_code == 405
            assert (await client.get("/boom")).status_code == 500
            assert (await client.get("/events")).text == "data: 1\n\ndata: 2\n\n"

    asyncio.run(requests())

    def count(method: str, route: str, status: int) -> float | None:
        labels = {"method": method, "route": route, "status": str(status)}
        return registry.get_sample_value("nst_http_requests_total", labels)

    assert count("GET", "/items/{item_id}", 200) == 3
    assert count("POST", "/items/{item_id}", 405) == 1
    assert count("GET", UNMATCHED, 404) == 1
    assert count("other", "/items/{item_id}", 405) == 1
    assert count("GET", "/boom", 500) == 1
    assert count("GET", "/events", 200) == 1
    assert opened == [1.0]
    duration = registry.get_sample_value(
        "nst_http_request_duration_seconds_count", {"method": "GET", "route": "/items/{item_id}"}
    )
    assert duration == 3
    assert registry.get_sample_value("nst_http_request_duration_seconds_count", STREAM) == 1


# -- the whole service (the shared stack: what other modules did shows, so the test reads changes) -


def scrape(client: httpx.Client) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.text)


def test_after_a_job_the_metrics_show_it_and_the_worker_that_ran_it(service: Service, client: httpx.Client) -> None:
    before = scrape(client)

    def grown(name: str, **labels: str) -> float:
        """How much a counter grew since `before` (a series not there before counts from 0)."""
        now = value(samples, name, **labels)
        assert now is not None, (name, labels)
        return now - (value(before, name, **labels) or 0)

    params = {"height": 32, "width": 32, "iterations": 6, "snapshot_every": 5, "seed": 1}
    answer = submit(client, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], params)
    assert answer.status_code == 202, answer.text
    job = poll(client, answer.json()["id"], is_final)
    assert job["status"] == "succeeded", job
    assert client.get(f"/jobs/{job['id']}/events").status_code == 200  # an ended job's stream closes
    assert client.get("/no/such/page").status_code == 404
    # The worker reports its rate with its next heartbeat (each second here).
    deadline = time.monotonic() + HANG
    samples = scrape(client)
    while not rate_keys(samples) and time.monotonic() < deadline:
        time.sleep(0.5)
        samples = scrape(client)
    assert value(samples, "nst_redis_up") == 1
    assert grown("nst_jobs_total", status="succeeded") == 1
    assert grown("nst_jobs_total", status="failed") == 0
    assert value(samples, "nst_queue_depth") == 0
    assert value(samples, "nst_jobs_running") == 0
    assert value(samples, "nst_workers_alive") == 1
    rates = [samples[key] for key in rate_keys(samples)]
    assert len(rates) == 1 and rates[0] > 0
    budgets = [v for (name, _), v in samples.items() if name == "nst_worker_memory_budget_bytes"]
    assert len(budgets) == 1 and budgets[0] > 0
    assert [dict(labels)["device"] for name, labels in samples if name == "nst_worker_info"] == ["cpu"]
    assert grown("nst_snapshots_written_total") == 2  # iterations 1 and 5
    assert grown("nst_job_run_seconds_count") == 1
    assert grown("nst_job_queue_wait_seconds_count") == 1
    assert grown("nst_http_requests_total", method="GET", route="/jobs/{job_id}", status="200") >= 1
    assert grown("nst_http_requests_total", method="POST", route="/jobs", status="202") == 1
    stream = {"method": "GET", "route": "/jobs/{job_id}/events"}
    assert grown("nst_http_requests_total", **stream, status="200") == 1
    assert grown("nst_http_requests_total", method="GET", route=UNMATCHED, status="404") == 1
    assert not any(dict(labels).get("route", "").startswith(f"/jobs/{job['id']}") for _, labels in samples)
    for outcome in telemetry.WEBHOOK_OUTCOMES:
        assert grown("nst_webhook_deliveries_total", outcome=outcome) == 0


def rate_keys(samples: Samples) -> list[tuple[str, frozenset[tuple[str, str]]]]:
    return [key for key in samples if key[0] == "nst_worker_iterations_per_second"]


def test_metrics_are_not_part_of_the_api_document(service: Service, client: httpx.Client) -> None:
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_the_openmetrics_format_is_served_to_a_scraper_that_asks(client: httpx.Client) -> None:
    answer = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")
