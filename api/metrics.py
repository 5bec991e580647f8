"""The service's Prometheus metrics, served by `GET /metrics` (api/routes/metrics.py).

Two kinds, one registry per app:
- HTTP requests (`nst_http_*`), counted by a pure ASGI middleware. One process serving a port
  counts in memory. When several serve one port (`nst api` with more than one process), a
  scrape reaches any one of them, so each would show its own counts by turns and a counter
  would seem to jump back: there each process writes its counts to files in
  PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, which `nst api` sets up) and
  a scrape of any process sums those of all, as one process would count. `process_*` (one
  process's CPU, memory and files) is left out there for the same reason.
- Everything about jobs and workers, read from Redis at scrape time by `ClusterCollector`, so a
  scrape of any one API process covers the whole service: the queue, the final-status counters
  and histograms the workers keep (jobs/telemetry.py), and what each live worker reports with
  its heartbeat.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobs import telemetry
from jobs.worker_reports import calibrated_checks, speed_of

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"  # the route label of a request no route matched (404s, probes, scanners)
OTHER_METHOD = "other"  # any method outside METHODS: a label value per invented method would grow without end
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A poll answers in about a millisecond; a submit with large images, in seconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
EVENT_STREAM = b"text/event-stream"
# prometheus-client reads it when it is first imported: it must be set before the process starts.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class HttpMetrics:
    """Requests by method, route template and status, and their latency: this process's, or in
    multiprocess mode those of every process on the port."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        """registry None: counted in prometheus-client's multiprocess files only."""
        self.requests = Counter(
            "nst_http_requests",
            "HTTP requests answered by the API (all its processes on this port), by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "nst_http_request_duration_seconds",
            "Time to answer an HTTP request (an event stream: time until it opened)",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        # labels() takes a lock and builds a key on each call; a poll should not pay it twice.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(method, route, str(status)), self.duration.labels(method, route))
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def route_template(scope: Scope, routes: Iterable[BaseRoute]) -> str:
    """The template of the route that answered (`/jobs/{job_id}`), never the raw path: the router
    leaves the route it chose in the scope. A request answered before routing (a body over the
    size limit) is matched here; one that matches nothing is UNMATCHED."""
    route = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] != Match.NONE), None)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template else UNMATCHED


def _is_event_stream(message: Message) -> bool:
    for name, value in message["headers"]:  # a plain loop: this runs on every answer
        if name.lower() == b"content-type":
            return bool(value.startswith(EVENT_STREAM))
    return False


class HttpMetricsMiddleware:
    """Counts every HTTP request once, when its answer has been sent (an event stream: when it
    opened, so that a stream watched for minutes neither waits to be counted nor sits in the
    latency histogram as a minutes-long request). Pure ASGI: a poll pays a few microseconds."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's route list itself: routes added later are matched too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        recorded = False

        def record() -> None:
            nonlocal recorded
            if recorded:
                return
            recorded = True
            method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
            route = route_template(scope, self.routes)
            self.metrics.observe(method, route, status, time.perf_counter() - start)

        async def timed_send(message: Message) -> None:
            nonlocal status
            await send(message)
            if message["type"] == "http.response.start":
                status = message["status"]
                if _is_event_stream(message):
                    record()
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()

        try:
            await self.app(scope, receive, timed_send)
        finally:
            record()  # an error, or a client that left before the end


def _histogram(name: str, documentation: str, snapshot: telemetry.HistogramSnapshot) -> HistogramMetricFamily:
    buckets = [(floatToGoString(bound), float(count)) for bound, count in snapshot.buckets]  # type: ignore[no-untyped-call]
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=snapshot.sum)


def _number(value: object) -> float | None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        return float(value)  # an int past float's range (a malformed report) raises
    except OverflowError:
        return None


RUN_SECONDS_HELP = "Time from a job's first start to its final status, for jobs that ended in a worker"


def cluster_families(state: telemetry.ClusterState) -> list[Metric]:
    """The service-wide metrics, from one reading of Redis."""
    totals = state.totals
    jobs = CounterMetricFamily("nst_jobs", "Jobs that reached a final status, by that status", labels=["status"])
    for status, count in totals.jobs.items():
        jobs.add_metric([status], count)
    deliveries = CounterMetricFamily(
        "nst_webhook_deliveries", "Webhook delivery attempts, by outcome", labels=["outcome"]
    )
    for outcome, count in totals.webhook_deliveries.items():
        deliveries.add_metric([outcome], count)
    info = InfoMetricFamily(
        "nst_worker", "Each live worker's device and precision", labels=["worker", "device", "device_type", "precision"]
    )
    budget = GaugeMetricFamily(
        "nst_worker_memory_budget_bytes", "Each live worker's memory budget for a job", labels=["worker"]
    )
    rate = GaugeMetricFamily(
        "nst_worker_iterations_per_second",
        "Each live worker's latest iterations per second (of its current or last job)",
        labels=["worker"],
    )
    measured = GaugeMetricFamily(
        "nst_worker_ms_per_iteration",
        "Milliseconds an iteration took each live worker when it measured its device at start, at working "
        "size `size` (height x width), with the path it serves",
        labels=["worker", "size"],
    )
    calibrated = GaugeMetricFamily(
        "nst_worker_calibrated",
        "1 where a live worker's start-up check `what` (memory, speed, precision, compile) ran to the end on its "
        "device, 0 where it was skipped or failed; `outcome` says what it decided",
        labels=["worker", "what", "outcome"],
    )
    for name, report in sorted(state.workers.items()):
        labels = [str(report.get(key, "")) for key in ("device", "device_type", "precision")]
        info.add_metric([name, *labels], {})
        if (value := _number(report.get("memory_budget_bytes"))) is not None:
            budget.add_metric([name], value)
        if (value := _number(report.get("iterations_per_second"))) is not None:
            rate.add_metric([name], value)
        if (speed := speed_of(report)) is not None:  # an earlier worker's report, or a malformed one: left out
            measured.add_metric([name, f"{speed.size[0]}x{speed.size[1]}"], speed.ms_per_iteration)
        for what, outcome, done in calibrated_checks(report):
            calibrated.add_metric([name, what, outcome], 1.0 if done else 0.0)
    return [
        GaugeMetricFamily("nst_queue_depth", "Jobs waiting in the queue", value=state.queue_depth),
        GaugeMetricFamily("nst_jobs_running", "Jobs running now", value=state.running),
        jobs,
        _histogram("nst_job_run_seconds", RUN_SECONDS_HELP, totals.run_seconds),
        _histogram("nst_job_queue_wait_seconds", "Time a job waited in the queue before its first run",
                   totals.queue_wait_seconds),
        GaugeMetricFamily("nst_workers_alive", "Workers that sent a heartbeat lately", value=len(state.workers)),
        info,
        budget,
        rate,
        measured,
        calibrated,
        CounterMetricFamily("nst_snapshots_written", "Snapshots workers wrote", value=totals.snapshots),
        deliveries,
    ]  # fmt: skip


class ClusterCollector(Collector):
    """Reads Redis at each scrape (synchronously: the route runs the scrape in a thread). With
    Redis away, only `nst_redis_up 0`: this process's own metrics still come through."""

    def __init__(self, client: redis.Redis, heartbeat_seconds: float) -> None:
        self.client = client
        self.heartbeat_seconds = heartbeat_seconds

    def describe(self) -> list[Metric]:
        return []  # nothing read at registration; names are not checked against other collectors

    def collect(self) -> Iterator[Metric]:
        up = "Whether this API process could read the service's state from Redis at this scrape"
        try:
            state = telemetry.read_cluster(self.client, self.heartbeat_seconds)
        except redis.RedisError as exc:
            log.warning("metrics: Redis not answering: %s", exc)
            yield GaugeMetricFamily("nst_redis_up", up, value=0)
            return
        yield GaugeMetricFamily("nst_redis_up", up, value=1)
        yield from cluster_families(state)


def multiprocess_dir() -> str | None:
    """The directory of prometheus-client's multiprocess mode, when this process runs in it."""
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


class ServiceMetrics:
    """The app's registry: the HTTP metrics (this process's, or with several processes on one
    port, all of theirs summed), this process's resources, and the cluster's from Redis."""

    def __init__(self, client: redis.Redis, heartbeat_seconds: float) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        shared = multiprocess_dir()
        if shared is None:
            self.http = HttpMetrics(self.registry)
            ProcessCollector(registry=self.registry)  # process_* : this API process's CPU, memory, open files
        else:
            self.http = HttpMetrics(None)  # written to the directory; read back summed:
            MultiProcessCollector(self.registry, path=shared)  # type: ignore[no-untyped-call]
        self.registry.register(ClusterCollector(client, heartbeat_seconds))
