"""Load on one API process: N pollers on GET /jobs/{id} while a burst of submissions arrives.

    python bench/load.py [--pollers 200 --submissions 500 --seconds 20]

Starts its own redis-server, one API process and no worker (submitted jobs only queue; the
queue limit is raised above the burst), then runs in one asyncio loop: the pollers, each
polling one of the submitted jobs, and the burst of multipart submissions, 50 in flight at a
time. Prints requests per second, p50/p99 latency and errors for each kind, and the API
process's resident memory before and after. Loopback only, bounded in count and time. The load
generator (httpx, Python) runs on the same machine as the server, so on a small machine the two
share the cores: read the figures as a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import serve  # noqa: E402

CONTENT = (ROOT / "examples" / "images" / "chelsea.png").read_bytes()
STYLE = (ROOT / "examples" / "images" / "starry_night.jpg").read_bytes()
SUBMIT_CONCURRENCY = 50


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def add(self, started: float, status: int | None) -> None:
        self.latencies.append(time.perf_counter() - started)
        if status is None:
            self.errors += 1
        else:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def line(self, name: str, seconds: float) -> str:
        ms = sorted(x * 1e3 for x in self.latencies)
        p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))] if ms else float("nan")
        return (
            f"{name:12} {len(ms):6d} requests {len(ms) / seconds:8.1f} req/s  p50 {statistics.median(ms):8.1f} ms  "
            f"p99 {p99:8.1f} ms  statuses {self.statuses}  transport errors {self.errors}"
        )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run_load(url: str, pollers: int, submissions: int, seconds: float) -> tuple[Tally, Tally, float]:
    limits = httpx.Limits(max_connections=pollers + SUBMIT_CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        first = await client.post(
            "/jobs", files=[("content", ("c.png", CONTENT)), ("style", ("s.jpg", STYLE))], data={"params": "{}"}
        )
        first.raise_for_status()
        ids = [first.json()["id"]]
        polls, submits = Tally(), Tally()
        start = time.perf_counter()
        deadline = start + seconds
        gate = asyncio.Semaphore(SUBMIT_CONCURRENCY)

        async def submit_one() -> None:
            async with gate:
                began = time.perf_counter()
                try:
                    files = [("content", ("c.png", CONTENT)), ("style", ("s.jpg", STYLE))]
                    answer = await client.post("/jobs", files=files, data={"params": '{"iterations": 10}'})
                    submits.add(began, answer.status_code)
                    if answer.status_code == 202:
                        ids.append(answer.json()["id"])
                except httpx.HTTPError:
                    submits.add(began, None)

        async def poller(index: int) -> None:
            while time.perf_counter() < deadline:
                began = time.perf_counter()
                try:
                    answer = await client.get(f"/jobs/{ids[index % len(ids)]}")
                    polls.add(began, answer.status_code)
                except httpx.HTTPError:
                    polls.add(began, None)

        await asyncio.gather(*(poller(i) for i in range(pollers)), *(submit_one() for _ in range(submissions)))
        return polls, submits, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--submissions", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    # One client submits everything: the per-key limits (the open service is one tenant) are lifted.
    env = {
        "NST_MAX_QUEUED_JOBS": str(args.submissions + 10),
        "NST_MAX_ACTIVE_JOBS_PER_KEY": str(args.submissions + 10),
        "NST_MAX_SUBMISSIONS_PER_MINUTE": str(args.submissions + 10),
    }
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), env, workers=0) as service:
        assert service.api is not None
        before = rss_mib(service.api.pid)
        polls, submits, elapsed = asyncio.run(run_load(service.url, args.pollers, args.submissions, args.seconds))
        after = rss_mib(service.api.pid)
        alive = service.api.poll() is None and httpx.get(f"{service.url}/healthz").status_code == 200
    print(
        f"one API process, {args.pollers} pollers for {args.seconds:.0f} s + a burst of {args.submissions} submissions"
    )
    print(polls.line("GET /jobs/id", elapsed))
    print(submits.line("POST /jobs", elapsed))
    print(f"API memory (RSS): {before:.0f} MiB before, {after:.0f} MiB after; API alive afterwards: {alive}")
    summary = {
        "poll_rps": round(len(polls.latencies) / elapsed, 1),
        "submit_rps": round(len(submits.latencies) / elapsed, 1),
        "errors": polls.errors + submits.errors,
        "rss_before_mib": round(before),
        "rss_after_mib": round(after),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
