"""What a poll of `GET /jobs/{id}` costs, against a bare FastAPI route, side by side in one run.

    python bench/polling.py [--pollers 50 --seconds 10]

Starts its own redis-server and, on 127.0.0.1, one uvicorn process of the API (`nst api`, as
`make run` starts it) and one of `bench/bare_app.py` (one async HGETALL of the same job hash, the
same uvicorn settings), and one of the API without its HTTP metrics middleware
(`bench/no_metrics_app.py`), to show what counting each request costs. The job is running, with
losses, an ETA and three snapshots, as a polled job is. Prints requests per second and latencies
(wrk where installed, else httpx) for the bare route, the full answer without and with metrics,
and the answer to a client that sends the ETag it has (304).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import PollLoad, poll_load, print_rounds  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from tests.services import Service, serve, submit  # noqa: E402
from worker.local import free_port, stop_processes, wait_for_http  # noqa: E402

SAMPLES = ROOT / "examples" / "images"
BARE = "bare route: one async HGETALL"
NO_METRICS = "GET /jobs/{id}, no metrics middleware"


def running_job(service: Service) -> str:
    """A job as the worker leaves it mid-run: claimed, with progress, losses and snapshots."""
    with httpx.Client(base_url=service.url, timeout=30) as client:
        answer = submit(client, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], {"iterations": 2500})
        job_id = answer.json()["id"]
    store = JobStore.from_url(service.redis_url, 3600)
    store.claim(job_id, {"status": "running", "started_at": "2026-01-01T00:00:00.000Z", "attempts": 1,
                         "weights": "random", "worker": "bench"}, "token", 3600)  # fmt: skip
    losses = {"total": 1234.5, "content": 12.25, "style": 1.2225}
    for iteration in (1, 50, 100):
        fields = {"iteration": iteration, "losses": losses, "iterations_per_second": 9.5, "eta_seconds": 250.0,
                  "snapshots": [i for i in (1, 50, 100) if i <= iteration]}  # fmt: skip
        store.publish(job_id, "token", fields, fields | {"total": 2500}, snapshot=(iteration, b"jpeg"))
    return job_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), workers=0) as service:
        job_id = running_job(service)
        port = free_port()
        bare = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "info", "--proxy-headers"],
            cwd=ROOT, env=service.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        plain_port = free_port()
        plain_log = open(Path(tmp) / "no-metrics-api.log", "ab")  # noqa: SIM115 - the child keeps it
        plain = subprocess.Popen(
            [sys.executable, "-m", "bench.no_metrics_app", str(plain_port)],
            cwd=ROOT, env=service.env(), stdout=plain_log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_http(f"http://127.0.0.1:{port}/bare/{job_id}", bare, timeout=30)
            wait_for_http(f"http://127.0.0.1:{plain_port}/healthz", plain, timeout=60)
            etag = httpx.get(f"{service.url}/jobs/{job_id}").headers["etag"]
            targets = {
                BARE: (f"http://127.0.0.1:{port}/bare/{job_id}", None),
                NO_METRICS: (f"http://127.0.0.1:{plain_port}/jobs/{job_id}", None),
                "GET /jobs/{id}": (f"{service.url}/jobs/{job_id}", None),
                "GET /jobs/{id} with If-None-Match (304)": (f"{service.url}/jobs/{job_id}", {"If-None-Match": etag}),
            }
            # Rounds in turn, so that a slow moment of the machine does not fall on one route only.
            rounds: dict[str, list[PollLoad]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, headers) in targets.items():
                    rounds[name].append(poll_load(url, args.pollers, args.seconds, headers))
        finally:
            stop_processes([bare, plain])
    print_rounds(rounds, args.pollers, args.seconds, "vs bare")


if __name__ == "__main__":
    main()
