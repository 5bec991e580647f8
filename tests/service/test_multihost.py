"""Hosts that share nothing but the network (issue 20, point 5): Redis, an S3-compatible server
(moto's), the API and two job workers, each in a network namespace of its own with its own
address (tests/netns.py), and no directory in common: every picture goes through the S3 server.
Jobs run end to end; then the worker host running a job is killed whole, and the job resumes on
the other host from its checkpoint in the store.

Skipped, saying why, only where network namespaces cannot be made (not root, no `ip`, no
CAP_NET_ADMIN). Every namespace, link and process it makes is removed after it, also on failure.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from jobs.blobs import checkpoint_path, input_paths, result_path
from jobs.keys import checkpoint_key, content_key, result_key, style_key
from jobs.store import JobStore
from tests import netns
from tests.conftest import SAMPLES
from tests.netns import Host, Network
from tests.s3_server import S3Server, start_s3_server
from tests.services import HANG, is_final, poll, submit
from worker.local import nst_command, redis_command, stop_processes, wait_for_http

pytestmark = [pytest.mark.service, pytest.mark.slow]

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
# Small: on two busy cores a 32x32 iteration can take a second (64x64: three).
TINY = {"height": 32, "width": 32}
REDIS_PORT = 6379
S3_PORT = 9000
API_PORT = 8000
CHECKPOINT_EVERY = 10
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Stack:
    """The hosts and what runs on them; `root` holds one directory (and log) per host."""

    network: Network
    root: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    s3: S3Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.hosts['api'].address}:{API_PORT}"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.hosts['redis'].address}:{REDIS_PORT}/0"

    @property
    def prefix(self) -> str:
        """Where in the bucket this run's pictures are (the bucket outlives no run, but a prefix
        of its own says they are this run's)."""
        return f"multihost-{self.network.suffix}"

    def host_dir(self, label: str) -> Path:
        path = self.root / label
        path.mkdir(exist_ok=True)
        return path

    def env(self) -> dict[str, str]:
        """A service process's settings: Redis and the store on their hosts, nothing on a disk."""
        assert self.s3 is not None
        return (
            os.environ
            | {
                "NST_REDIS_URL": self.redis_url,
                "NST_API_PROCESSES": "1",
                "NST_VGG_WEIGHTS": "random",
                "NST_DEVICE": "cpu",
                "NST_WORKER_HEARTBEAT_SECONDS": "1",
                # A killed host's job is requeued seconds after its lease lapses; the live worker's
                # one heartbeat thread renews its own lease long before.
                "NST_LEASE_SECONDS": "4",
                "NST_CHECKPOINT_EVERY": str(CHECKPOINT_EVERY),
                "PYTHONUNBUFFERED": "1",
            }
            | self.s3.env(self.prefix)
        )

    def spawn(self, label: str, command: list[str]) -> subprocess.Popen[bytes]:
        """`command` on host `label`, in the host's own directory, its output in LABEL.log."""
        host = self.hosts[label]
        with (self.root / f"{label}.log").open("ab") as log:
            process = subprocess.Popen(
                [*host.prefix, *command],
                env=self.env() if label != "redis" else None,
                cwd=self.host_dir(label),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes[label] = process
        return process

    def start(self) -> Stack:
        for label in ("redis", "s3", "api", "worker1", "worker2"):
            self.hosts[label] = self.network.add_host(label)
        self.start_redis()
        self.s3 = start_s3_server(
            self.root / "s3.log", host=self.hosts["s3"].address, port=S3_PORT, prefix=self.hosts["s3"].prefix
        )
        for label in ("worker1", "worker2"):
            self.spawn(label, nst_command("worker", "--no-banner"))
        api = self.spawn("api", nst_command("api", "--host", self.hosts["api"].address, "--port", str(API_PORT)))
        wait_for_http(f"{self.url}/healthz", api, timeout=HANG)
        self.wait_ready(workers=2)
        return self

    def start_redis(self) -> None:
        """worker.local's redis-server, listening on its host's address for the other hosts."""
        command = redis_command(REDIS_PORT, self.host_dir("redis"))
        command[command.index("--bind") + 1] = self.hosts["redis"].address
        command[command.index("--protected-mode") + 1] = "no"  # no password: the others are remote
        redis = self.spawn("redis", command)
        wait_for_tcp(self.hosts["redis"].address, REDIS_PORT, redis)

    def wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + HANG
        while time.monotonic() < deadline:
            answer = httpx.get(f"{self.url}/readyz", timeout=HANG)
            if answer.status_code == 200 and answer.json()["workers"] >= workers:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the workers never became ready:\n{self.logs()}")

    def host_of(self, worker_name: str) -> str:
        """The label of the host whose process calls itself `worker_name` (host:pid)."""
        pid = int(worker_name.rpartition(":")[2])
        return next(label for label, host in self.hosts.items() if pid in host.pids())

    def kill(self, label: str) -> None:
        """The host is gone at once: every process in it killed, its namespace deleted."""
        self.network.remove(self.hosts[label])
        self.processes[label].wait()

    def log(self, label: str) -> str:
        return (self.root / f"{label}.log").read_text(errors="replace")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {label}\n{self.log(label)[-tail:]}" for label in self.processes)

    def stop(self) -> None:
        """The service processes stopped gently (what the network's close kills otherwise)."""
        stop_processes([self.processes[label] for label in ("api", "worker1", "worker2") if label in self.processes])
        if self.s3 is not None:
            self.s3.stop()
        if "redis" in self.processes:
            stop_processes([self.processes["redis"]])


def wait_for_tcp(address: str, port: int, process: subprocess.Popen[bytes]) -> None:
    """Until something accepts connections on address:port; fails early if `process` exits."""
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with status {process.returncode}")
        with socket.socket() as sock:
            sock.settimeout(2)
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {address}:{port}")


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces cannot be made here: {reason}")
    made = Network()
    try:
        yield made.start()
    finally:
        made.close()


@pytest.fixture(scope="module")
def stack(network: Network, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    started = Stack(network, tmp_path_factory.mktemp("multihost"))
    try:
        yield started.start()
    finally:
        try:
            started.stop()
        finally:
            network.close()  # whatever stop() left, and the namespaces
            for process in started.processes.values():
                process.wait()


@pytest.fixture
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=HANG) as http:
        yield http


@pytest.fixture
def store(stack: Stack) -> Iterator[JobStore]:
    """The job state, read from Redis's host over the network."""
    job_store = JobStore.from_url(stack.redis_url, 3600)
    yield job_store
    job_store.redis.close()


def assert_no_picture_bytes_in_redis(store: JobStore, job_id: str) -> None:
    record = store.get(job_id)
    assert record is not None and record.blobs, record
    legacy = [content_key(job_id), result_key(job_id), checkpoint_key(job_id)]
    legacy += [style_key(job_id, index) for index in range(record.style_count)]
    assert store.redis.exists(*legacy) == 0, [key for key in legacy if store.redis.exists(key)]


def test_two_namespaces_reach_each_other_and_the_test(network: Network, tmp_path: Path) -> None:
    """The plumbing alone: a server on one host answers another host and the test's namespace,
    and a host removed is unreachable."""
    one, two = network.add_host("ping1"), network.add_host("ping2")
    server = subprocess.Popen(
        [*one.prefix, sys.executable, "-m", "http.server", "--bind", one.address, "8000", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_tcp(one.address, 8000, server)
        fetch = f"import urllib.request; print(urllib.request.urlopen('http://{one.address}:8000/').status)"
        assert (
            subprocess.run([*two.prefix, sys.executable, "-c", fetch], capture_output=True, text=True).stdout == "200\n"
        )
        assert httpx.get(f"http://{one.address}:8000/").status_code == 200
        network.remove(one)
        server.wait()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://{one.address}:8000/", timeout=2)
    finally:
        network.remove(one)
        network.remove(two)
        server.wait()


def test_jobs_run_end_to_end_with_every_picture_in_the_s3_store(
    stack: Stack, client: httpx.Client, store: JobStore
) -> None:
    jobs = [submit(client, COFFEE, [STARRY], {"iterations": 10, **TINY, "seed": n}) for n in range(2)]
    assert [answer.status_code for answer in jobs] == [202, 202], [answer.text for answer in jobs]
    for answer in jobs:
        done = poll(client, answer.json()["id"], is_final)
        assert done["status"] == "succeeded", f"{done}\n{stack.logs()}"
        result = client.get(done["result_url"])
        assert result.status_code == 200 and result.content.startswith(PNG)
        assert_no_picture_bytes_in_redis(store, done["id"])
        assert f"{stack.prefix}/{result_path(done['id'])}" in stack.s3.keys(stack.prefix)  # type: ignore[union-attr]


def test_a_killed_worker_host_s_job_resumes_on_the_other_host_from_its_checkpoint_in_the_store(
    stack: Stack, client: httpx.Client, store: JobStore
) -> None:
    assert stack.s3 is not None
    # Long enough that it cannot end in the moment between its first checkpoint and the kill.
    job_id = submit(client, COFFEE, [STARRY], {"iterations": 20 * CHECKPOINT_EVERY, **TINY}).json()["id"]
    poll(client, job_id, lambda j: j["status"] != "queued")
    running = store.get(job_id)
    assert running is not None and running.status == "running" and running.worker is not None, running
    first = stack.host_of(running.worker)
    survivor = "worker2" if first == "worker1" else "worker1"
    # Its inputs are in the bucket; once its first checkpoint is there too, its host goes at once.
    checkpoint = f"{stack.prefix}/{checkpoint_path(job_id)}"
    deadline = time.monotonic() + HANG
    while checkpoint not in (stored := set(stack.s3.keys(stack.prefix))):
        ended = store.get(job_id)
        assert ended is not None and not is_final(ended.model_dump()), f"it ended without a checkpoint: {stored}"
        assert time.monotonic() < deadline, f"no checkpoint in the bucket: {stored}\n{stack.logs()}"
        time.sleep(0.05)
    stack.kill(first)
    killed_at = client.get(f"/jobs/{job_id}").json()
    assert killed_at["status"] == "running", f"the job ended before its host was killed: {killed_at}"
    assert {f"{stack.prefix}/{path}" for path in input_paths(job_id, 1)} <= stored, stored

    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded", f"{done}\n{stack.logs()}"
    record = store.get(job_id)
    assert record is not None and record.attempts == 2, record
    assert record.worker is not None and stack.host_of(record.worker) == survivor, record.worker
    resumed = re.findall(rf"job {job_id}: resuming from the checkpoint at iteration (\d+)", stack.log(survivor))
    assert len(resumed) == 1 and int(resumed[0]) > 0, stack.logs()
    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.content.startswith(PNG)
    assert f"{stack.prefix}/{result_path(job_id)}" in stack.s3.keys(stack.prefix)
    assert_no_picture_bytes_in_redis(store, job_id)
