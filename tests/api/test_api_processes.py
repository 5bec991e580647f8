"""`nst api` with several processes (NST_API_PROCESSES): uvicorn's supervisor runs them on one
port, each answers, and `GET /metrics` counts the requests of all of them whichever answers the
scrape (prometheus-client's multiprocess mode in a directory `nst api` makes and removes)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api.commands import api_processes
from tests.services import HANG, RedisServer
from worker.local import free_port, nst_command, stop_processes, wait_for_http

PROCESSES = 2


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, ValueError):  # gone meanwhile
            continue
    return found


def server_processes(pid: int) -> list[int]:
    """The supervisor's API processes (not multiprocessing's resource tracker)."""
    found = []
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command and b"resource_tracker" not in command:
            found.append(child)
    return found


def environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


def counted(text: str, route: str, status: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "nst_http_requests_total" and sample.labels == {
                "method": "GET",
                "route": route,
                "status": status,
            }:
                return sample.value
    return 0.0


@pytest.mark.service  # an `nst api` of its own
def test_several_processes_share_the_port_and_the_metrics_count_them_all(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "NST_REDIS_URL": redis_server.url(redis_server.new_database()),
        "NST_BLOB_STORE": str(tmp_path / "blobs"),
        "NST_API_PROCESSES": str(PROCESSES),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # `nst api` makes its own
    log = tmp_path / "api.log"
    with log.open("ab") as out:
        api = subprocess.Popen(nst_command("api", "--port", str(port)), env=env, stdout=out, stderr=out)
    workers: list[int] = []
    try:
        wait_for_http(f"{url}/healthz", api, timeout=HANG)
        deadline = time.monotonic() + HANG
        while len(workers := server_processes(api.pid)) < PROCESSES and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(workers) == PROCESSES, log.read_text()
        shared = Path(environment(workers[0])["PROMETHEUS_MULTIPROC_DIR"])
        assert all(environment(pid)["PROMETHEUS_MULTIPROC_DIR"] == str(shared) for pid in workers)

        # Each process counts into a file of its own: new connections until both have answered.
        sent = 0
        lock = threading.Lock()

        def ask() -> None:
            nonlocal sent
            answer = httpx.get(f"{url}/jobs/not-a-job", timeout=HANG)  # a fresh connection each
            assert answer.status_code == 404
            with lock:
                sent += 1

        answered: set[int] = set()
        while answered != set(workers) and time.monotonic() < deadline:
            askers = [threading.Thread(target=ask) for _ in range(8)]
            for asker in askers:
                asker.start()
            for asker in askers:
                asker.join()
            answered = {int(f.stem.rsplit("_", 1)[1]) for f in shared.glob("counter_*.db")}
        assert answered == set(workers), f"only {answered} of {workers} answered"

        # Every scrape, whichever process answers it, counts the requests of both.
        for _ in range(6):
            scrape = httpx.get(f"{url}/metrics", timeout=HANG)  # a fresh connection each
            assert scrape.status_code == 200
            assert counted(scrape.text, "/jobs/{job_id}", "404") == sent, scrape.text
            assert "process_cpu_seconds_total" not in scrape.text  # one process's: left out
            assert "nst_redis_up 1.0" in scrape.text  # the cluster's metrics are still there

        api.send_signal(signal.SIGTERM)
        api.wait(timeout=HANG)
        assert api.returncode == 0, log.read_text()
        assert not shared.exists()  # the counts of this run are not summed into the next
        assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    finally:
        stop_processes([api])
        for pid in workers:  # a supervisor killed by the grace period leaves its processes
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, signal.SIGKILL)


def test_the_process_count_is_the_flag_else_the_setting_else_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NST_API_PROCESSES", "3")
    assert api_processes(5) == 5
    assert api_processes(None) == 3
    monkeypatch.setenv("NST_API_PROCESSES", "")  # as compose leaves it unset
    assert api_processes(None) == len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        api_processes(0)
