"""`nst up` keeps its children running: the back-off, the restart log, and a real worker killed
with SIGKILL in the middle of a job under a real `nst up`."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis

from jobs.keys import WORKERS_KEY
from jobs.store import JobStore
from tests.conftest import SAMPLES
from tests.services import HANG, is_final, poll, submit
from worker.local import free_port, nst_command, wait_for_http, worker_devices
from worker.supervisor import Child, Supervisor, backoff_seconds, exit_reason

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"


def test_the_back_off_doubles_from_one_second_up_to_thirty() -> None:
    assert [backoff_seconds(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_exit_reasons_name_the_signal() -> None:
    assert exit_reason(-9) == "signal SIGKILL"
    assert exit_reason(3) == "status 3"


def test_workers_go_one_per_gpu_by_default_else_one() -> None:
    assert worker_devices(None, 0, {}) == [None]
    assert worker_devices(None, 2, {}) == ["cuda:0", "cuda:1"]
    assert worker_devices(3, 2, {}) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(2, 0, {}) == [None, None]
    assert worker_devices(2, 4, {"NST_DEVICE": "cuda:1"}) == [None, None]  # the operator chose


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def wait_exited(child: Child) -> None:
    assert child.process is not None
    child.process.wait(timeout=HANG)


def test_a_child_that_keeps_failing_is_restarted_with_growing_back_off_and_each_restart_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    failing = Child("failing", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ))
    steady = Child("steady", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    supervisor = Supervisor([failing, steady], clock=clock)
    caplog.set_level(logging.WARNING, logger="nst.up")
    try:
        supervisor.start_all()
        first_steady = steady.process
        delays = []
        for _ in range(4):
            wait_exited(failing)
            supervisor.check()  # notes the exit, schedules the restart
            assert failing.restart_at is not None
            delays.append(failing.restart_at - clock.now)
            supervisor.check()  # too early: nothing starts
            assert failing.process.poll() is not None  # type: ignore[union-attr]
            clock.now = failing.restart_at
            supervisor.check()
            assert failing.restart_at is None
        assert delays == [1, 2, 4, 8]
        assert failing.restarts == 4 and failing.history == ["status 3"] * 4
        assert steady.process is first_steady and steady.running  # the others kept serving
        messages = [r.getMessage() for r in caplog.records]
        assert sum("failing exited with status 3" in m for m in messages) == 4
        assert sum("failing started again" in m for m in messages) == 4
    finally:
        supervisor.stop_all(grace=5)
    assert not steady.running and not failing.running


def test_a_child_that_ran_a_long_while_is_restarted_after_one_second_again() -> None:
    clock = FakeClock()
    child = Child("flaky", [sys.executable, "-c", "raise SystemExit(1)"], dict(os.environ))
    supervisor = Supervisor([child], clock=clock)
    try:
        supervisor.start_all()
        child.failures = 5  # a bad spell earlier
        clock.now += 3600  # then an hour of service before this exit
        wait_exited(child)
        supervisor.check()
        assert child.restart_at == clock.now + 1
    finally:
        supervisor.stop_all(grace=5)


def test_stopping_never_restarts() -> None:
    clock = FakeClock()
    child = Child("quits", [sys.executable, "-c", "pass"], dict(os.environ))
    supervisor = Supervisor([child], clock=clock)
    supervisor.start_all()
    wait_exited(child)
    supervisor.stop_all(grace=5)
    clock.now += 100
    supervisor.check()
    assert child.restarts == 0


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of each process whose parent is `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            found.append((int(entry.name), cmdline))
    return found


def worker_pids(up_pid: int) -> list[int]:
    return [pid for pid, cmdline in children_of(up_pid) if "core.cli worker" in cmdline]


def nst_up_env() -> dict[str, str]:
    """For an `nst up` whose worker dies in the tests: quick heartbeats, leases and checkpoints;
    its own Redis (no NST_REDIS_URL)."""
    env = os.environ | {
        "NST_VGG_WEIGHTS": "random",
        "NST_DEVICE": "cpu",
        "NST_WORKER_HEARTBEAT_SECONDS": "1",
        "NST_LEASE_SECONDS": "3",
        "NST_CHECKPOINT_EVERY": "20",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("NST_REDIS_URL", None)
    return env


@pytest.mark.service
def test_under_nst_up_a_worker_killed_mid_job_is_replaced_and_its_job_finishes_once(tmp_path: Path) -> None:
    port = free_port()
    env = nst_up_env()
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log_file:
        up = subprocess.Popen(
            nst_command("up", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--workers", "1"),
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    health_failures: list[str] = []
    watching = threading.Event()

    def watch_health() -> None:
        while not watching.is_set():
            try:
                if httpx.get(f"{url}/healthz", timeout=HANG).status_code != 200:
                    health_failures.append("status")
            except httpx.HTTPError as exc:
                health_failures.append(repr(exc))
            time.sleep(0.2)

    try:
        wait_for_http(f"{url}/readyz", up, timeout=HANG)
        redis_url = next(line for line in log_path.read_text().split() if line.startswith("redis://"))
        client = redis.Redis.from_url(redis_url)
        store = JobStore(client, 3600)
        with httpx.Client(base_url=url, timeout=30) as http:
            job = submit(http, COFFEE, [STARRY], {"iterations": 160, "height": 32, "width": 32}).json()
            poll(http, job["id"], lambda j: j["progress"]["iteration"] >= 40)
            [victim] = worker_pids(up.pid)
            watcher = threading.Thread(target=watch_health, daemon=True)
            watcher.start()
            os.kill(victim, signal.SIGKILL)
            killed_at = time.monotonic()
            # A new worker is ready: a new process has loaded its weights and says it is alive.
            replacement = None
            while time.monotonic() - killed_at < HANG and replacement is None:
                alive = [m.decode() for m in client.zrangebyscore(WORKERS_KEY, time.time() - 2, "+inf")]
                fresh = [name for name in alive if not name.endswith(f":{victim}")]
                replacement = fresh[0] if fresh else None
                time.sleep(0.1)
            assert replacement is not None, f"no new worker within {HANG:.0f} s:\n{log_path.read_text()}"
            final = poll(http, job["id"], is_final)
        watching.set()
        watcher.join()
        assert final["status"] == "succeeded", final
        assert store.completions(job["id"]) == 1
        assert health_failures == [], health_failures
        assert "exited with signal SIGKILL" in log_path.read_text()
        assert up.poll() is None  # nst up itself kept going
    finally:
        watching.set()
        up.send_signal(signal.SIGINT)  # Ctrl-C: the children have their own process group, nst up stops them
        try:
            up.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 0, log_path.read_text()
    leftovers = subprocess.run(["pgrep", "-s", str(up.pid)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "nst up left processes behind"


def session_processes(session: int) -> list[str]:
    """The command lines of the processes of a session (nst up's, started with start_new_session)."""
    found = subprocess.run(["pgrep", "-a", "-s", str(session)], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if line.strip()]


@pytest.mark.service
def test_a_sigkilled_nst_up_leaves_no_child_behind_and_its_job_resumes_when_it_is_back(tmp_path: Path) -> None:
    """The OOM killer, `kill -9` or a service manager's stop time-out end `nst up` without a word
    to its children: each must end by itself within moments (a worker mid-job too), and the job
    resumes from its checkpoint once the stack is started again."""
    port = free_port()
    env = nst_up_env()
    data_dir = tmp_path / "data"
    command = nst_command("up", "--port", str(port), "--data-dir", str(data_dir), "--workers", "1")
    url = f"http://127.0.0.1:{port}"

    def start(log_name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / log_name, "wb") as log_file:
            return subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    first = start("up1.log")
    second = None
    try:
        wait_for_http(f"{url}/readyz", first, timeout=HANG)
        with httpx.Client(base_url=url, timeout=30) as http:
            job = submit(http, COFFEE, [STARRY], {"iterations": 20000, "height": 32, "width": 32}).json()
            poll(http, job["id"], lambda j: j["progress"]["iteration"] >= 40)
        assert worker_pids(first.pid), "no worker under nst up"
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        deadline = time.monotonic() + HANG  # "within a few seconds"; only a hang reaches this
        while session_processes(first.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_processes(first.pid) == [], "children outlived nst up"

        second = start("up2.log")  # the same data dir: the same Redis, the job still there
        wait_for_http(f"{url}/readyz", second, timeout=HANG)
        with httpx.Client(base_url=url, timeout=30) as http:
            resumed = poll(http, job["id"], lambda j: j["status"] == "running" and j["progress"]["iteration"] > 40)
            assert resumed["status"] == "running"
            canceled = http.post(f"/jobs/{job['id']}/cancel")
            assert canceled.status_code == 202
            final = poll(http, job["id"], is_final)
        assert final["status"] == "canceled"
        worker_log = (tmp_path / "up2.log").read_text()
        assert "resuming from the checkpoint" in worker_log and "attempt 2" in worker_log
    finally:
        for up in (first, second):
            if up is not None and up.poll() is None:
                up.send_signal(signal.SIGINT)
                try:
                    up.wait(timeout=HANG)
                except subprocess.TimeoutExpired:
                    os.killpg(up.pid, signal.SIGKILL)
        for up in (first, second):
            if up is not None:
                for line in session_processes(up.pid):
                    os.kill(int(line.split()[0]), signal.SIGKILL)


def read_until(process: subprocess.Popen[str], marker: str, lines: list[str]) -> bool:
    """Read the process's output line by line until one holds `marker` (True) or it ends (False)."""
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if marker in line:
            return True
    return False


@pytest.mark.service
def test_nst_up_says_it_is_up_last_once_every_child_is_ready_and_logs_no_polls_of_its_own(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"NST_VGG_WEIGHTS": "random", "NST_DEVICE": "cpu", "PYTHONUNBUFFERED": "1"}
    env.pop("NST_REDIS_URL", None)
    command = nst_command("up", "--port", str(port), "--data-dir", str(tmp_path / "data"), "--workers", "1")
    up = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    lines: list[str] = []
    try:
        assert read_until(up, "neural-style-service is up", lines), "\n".join(lines)
        before = "\n".join(lines)
        # Every child had said it was ready before the banner: the API, the job worker, the deliverer.
        assert "Application startup complete" in before
        assert re.search(r"celery@\S+ ready\.", before) and re.search(r"nst-webhooks-\d+@\S+ ready\.", before)
        assert "weights random loaded" in before
        assert "/readyz" not in before and "GET /" not in before  # no polls of its own
        assert "[tasks]" not in before and "-------------- " not in before  # no Celery banners
        assert read_until(up, "Ctrl-C stops everything", lines)
        banner = "\n".join(lines[lines.index(next(line for line in lines if "is up" in line)) :])
        assert f"http://127.0.0.1:{port}" in banner and "/bin/nst" in banner and "activate" in banner
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=HANG).json()["workers"] == 1
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=HANG)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 0


@pytest.mark.service  # an `nst up` whose worker cannot load its weights
def test_a_child_that_cannot_start_ends_nst_up_with_its_reason_last(tmp_path: Path) -> None:
    env = os.environ | {"NST_VGG_WEIGHTS": str(tmp_path / "no-such-weights.pth"), "NST_DEVICE": "cpu"}
    env.pop("NST_REDIS_URL", None)
    command = nst_command("up", "--port", str(free_port()), "--data-dir", str(tmp_path / "data"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG, start_new_session=True)
    assert done.returncode != 0
    last = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()][-2:]
    assert last[0].startswith("nst: error: nst worker could not start"), last
    assert "NST_VGG_WEIGHTS" in last[1] and "no-such-weights.pth" in last[1], last
