"""What API keys cost a poll of `GET /jobs/{id}`: the API without keys and with them, side by side.

    python bench/auth_polling.py [--pollers 50 --seconds 5 --rounds 3 --keys 10]

Starts its own redis-server and two uvicorn processes of the API (`nst api`) on 127.0.0.1: one
open, one with NST_API_KEYS_FILE holding `--keys` keys (every one is compared on each request).
Each polls a running job of its own (with losses, an ETA and three snapshots, as a polled job
is; on the keyed API owned by the key the pollers send). Prints requests per second and
latencies (wrk where installed, else httpx), in rounds taken in turn so a slow moment of the
machine does not fall on one side only.
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

from api.keys_file import add_key  # noqa: E402
from bench.loadgen import PollLoad, poll_load, print_rounds  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from tests.services import serve, submit  # noqa: E402
from worker.local import free_port, nst_command, stop_processes, wait_for_http  # noqa: E402

SAMPLES = ROOT / "examples" / "images"


def running_job(url: str, redis_url: str, headers: dict[str, str]) -> str:
    """A job submitted to the API at `url`, then left as a worker leaves it mid-run."""
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        answer = submit(client, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], {"iterations": 2500})
        assert answer.status_code == 202, answer.text
        job_id: str = answer.json()["id"]
    store = JobStore.from_url(redis_url, 3600)
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
    parser.add_argument("--keys", type=int, default=10, help="keys in the file (each is compared per request)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), workers=0) as service:
        keys_file = Path(tmp) / "keys.jsonl"
        key = ""
        for index in range(args.keys):
            key = add_key(keys_file, f"client{index}")[1]  # the pollers use the last one
        port = free_port()
        log = open(Path(tmp) / "keyed-api.log", "ab")  # noqa: SIM115 - the child keeps it
        keyed = subprocess.Popen(
            nst_command("api", "--port", str(port)), env=service.env() | {"NST_API_KEYS_FILE": str(keys_file)},
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", keyed, timeout=60)
            keyed_url = f"http://127.0.0.1:{port}"
            auth = {"Authorization": f"Bearer {key}"}
            open_job = running_job(service.url, service.redis_url, {})
            keyed_job = running_job(keyed_url, service.redis_url, auth)
            etag = httpx.get(f"{keyed_url}/jobs/{keyed_job}", headers=auth).headers["etag"]
            targets = {
                "GET /jobs/{id}, no keys": (f"{service.url}/jobs/{open_job}", {}),
                f"GET /jobs/{{id}}, Bearer ({args.keys} keys)": (f"{keyed_url}/jobs/{keyed_job}", auth),
                "the same with If-None-Match (304)": (f"{keyed_url}/jobs/{keyed_job}", auth | {"If-None-Match": etag}),
            }
            rounds: dict[str, list[PollLoad]] = {name: [] for name in targets}
            for _ in range(args.rounds):
                for name, (url, headers) in targets.items():
                    rounds[name].append(poll_load(url, args.pollers, args.seconds, headers))
        finally:
            stop_processes([keyed])
    print_rounds(rounds, args.pollers, args.seconds, "vs open")


if __name__ == "__main__":
    main()
