"""What the service costs on top of the optimisation, measured side by side in one run.

    python bench/service_overhead.py [--iterations 200 --size 128 --pollers 50 --seconds 10]

Starts its own redis-server, one CPU worker and one API process on 127.0.0.1 (random weights),
then prints: the wall time of one job through HTTP (submit, poll every 0.1 s until it has
succeeded, download the result) against `nst stylize` with the same parameters in a fresh
process; and GET /jobs/{id} requests per second with N concurrent pollers (wrk, where
installed), with latencies, while the worker is idle and while it runs a job.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.loadgen import poll_load  # noqa: E402
from tests.services import Service, poll, serve, submit  # noqa: E402

SAMPLES = ROOT / "examples" / "images"


def time_cli(params: dict[str, int], out: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "core.cli", "stylize", str(SAMPLES / "coffee.png"), str(SAMPLES / "starry_night.jpg"),
         "-o", str(out), "-q", "--device", "cpu", "--weights", "random",
         *[arg for k, v in params.items() for arg in (f"--{k}", str(v))]],
        check=True,
    )  # fmt: skip
    return time.perf_counter() - start


def time_http(service: Service, params: dict[str, int]) -> tuple[float, float]:
    """(wall time from submit to result downloaded, time the worker spent running the job)."""
    with httpx.Client(base_url=service.url, timeout=30) as client:
        start = time.perf_counter()
        job = submit(client, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], params).json()
        done = poll(client, job["id"], lambda j: j["status"] in ("succeeded", "failed"), timeout=3600)
        assert done["status"] == "succeeded", done
        client.get(done["result_url"]).raise_for_status()
        wall = time.perf_counter() - start
    from datetime import datetime

    ran = datetime.fromisoformat(done["finished_at"]) - datetime.fromisoformat(done["started_at"])
    return wall, ran.total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    params = {"iterations": args.iterations, "height": args.size, "width": args.size, "seed": 0}
    images = (SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"])
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp)) as service:
        cli_s = time_cli(params, Path(tmp) / "cli.png")
        http_s, worker_s = time_http(service, params)
        with httpx.Client(base_url=service.url) as client:
            done = submit(client, *images, params).json()["id"]
            poll(client, done, lambda j: j["status"] == "succeeded", timeout=3600)
            idle = poll_load(f"{service.url}/jobs/{done}", args.pollers, args.seconds)
            busy_id = submit(client, *images, params | {"iterations": 20000}).json()["id"]
            poll(client, busy_id, lambda j: j["status"] == "running", timeout=60)
            busy = poll_load(f"{service.url}/jobs/{busy_id}", args.pollers, args.seconds)
            client.post(f"/jobs/{busy_id}/cancel")
    print(f"{args.iterations} iterations at {args.size}x{args.size}, CPU, random weights")
    print(f"{'way':46} {'wall s':>8}")
    print(f"{'nst stylize (fresh process, imports included)':46} {cli_s:8.2f}")
    print(f"{'HTTP: submit, poll, download the result':46} {http_s:8.2f}")
    print(f"{'   of which the worker ran the job':46} {worker_s:8.2f}")
    print(f"GET /jobs/{{id}}, {args.pollers} concurrent pollers, {args.seconds:.0f} s, one API process ({idle.tool}):")
    for name, load in (("worker idle", idle), ("worker running a job", busy)):
        print(
            f"  {name:22} {load.requests_per_second:7.0f} req/s  p50 {load.p50_ms:6.1f} ms  "
            f"p99 {load.p99_ms:6.1f} ms  {load.errors} errors"
        )
    print(
        json.dumps(
            {"cli_s": round(cli_s, 2), "http_s": round(http_s, 2), "worker_s": round(worker_s, 2),
             "poll_rps_idle": round(idle.requests_per_second), "poll_rps_busy": round(busy.requests_per_second),
             "poll_p99_ms_idle": idle.p99_ms, "poll_p99_ms_busy": busy.p99_ms}
        )
    )  # fmt: skip


if __name__ == "__main__":
    main()
