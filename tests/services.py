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

from worker.local import free_port, nst_command, start_redis, stop_processes, wait_for_http

FINAL = ("succeeded", "failed", "canceled")


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
                "NST_VGG_WEIGHTS": "random",
                "NST_DEVICE": "cpu",
                "NST_WORKER_HEARTBEAT_SECONDS": "1",
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
        wait_for_http(f"{self.url}/healthz", self.api, timeout=60)

    def wait_ready(self, workers: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = httpx.get(f"{self.url}/readyz", timeout=5)
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
    timeout: float = 180,
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
