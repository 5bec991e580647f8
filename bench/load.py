"""Load on the API: N pollers on GET /jobs/{id} while a burst of submissions arrives.

    python bench/load.py [--pollers 200 --submissions 500 --seconds 20]
    python bench/load.py --api-processes 2 --max-concurrent-uploads 8
    python bench/load.py --compare      # before and after issue 20, side by side in one run

Starts its own redis-server, the API (`nst api`, with --api-processes processes; default as
`nst api`: NST_API_PROCESSES, else one per CPU core) and no worker (submitted jobs only queue;
the queue limit is raised above the burst), then runs in one asyncio loop: the pollers, each
polling one of the submitted jobs, and the burst of multipart submissions, 50 in flight at a
time; each poller and each submitter has a connection of its own, kept alive (the pollers speak
HTTP/1.1 by hand, the submitters use httpx). Prints requests per second (each kind over its own
span), p50/p99 latency and errors for each kind, and the resident memory of the API's processes
before and after.

--compare runs it twice on fresh stacks: "before" is one API process with no bound on the
uploads in progress (NST_MAX_CONCURRENT_UPLOADS very large, as before issue 20), "after" the
given (or default) processes and bound; then prints both side by side. Loopback only, bounded in
count and time. The load generator (Python) runs on the same machine as the server, so on
a small machine the two share the cores: read the figures as a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from api.commands import api_processes  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from tests.services import serve  # noqa: E402

CONTENT = (ROOT / "examples" / "images" / "chelsea.png").read_bytes()
STYLE = (ROOT / "examples" / "images" / "starry_night.jpg").read_bytes()
SUBMIT_CONCURRENCY = 50
# Plain HTTP on loopback: one TLS context for every client, not one each (each loads the CA bundle).
TLS = ssl.create_default_context()
UNBOUNDED = 1_000_000  # NST_MAX_CONCURRENT_UPLOADS that never makes a submission wait
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # transport errors by kind
    statuses: dict[int, int] = field(default_factory=dict)
    first: float = float("inf")
    last: float = 0.0

    def add(self, started: float, status: int | None, error: str = "") -> None:
        now = time.perf_counter()
        self.latencies.append(now - started)
        self.first, self.last = min(self.first, started), max(self.last, now)
        if status is None:
            self.errors[error] = self.errors.get(error, 0) + 1
        else:
            self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> dict[str, Any]:
        ms = sorted(x * 1e3 for x in self.latencies)
        span = self.last - self.first if ms else float("nan")
        return {
            "requests": len(ms),
            "rps": round(len(ms) / span, 1),
            "p50_ms": round(statistics.median(ms), 1) if ms else float("nan"),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1) if ms else float("nan"),
            "statuses": self.statuses,
            "transport_errors": sum(self.errors.values()),
            "error_kinds": self.errors,
        }


def rss_mib(pid: int) -> float:
    """Resident memory of the process and all its descendants (uvicorn's supervisor and its
    API processes)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One GET on a kept-alive connection, HTTP/1.1 by hand: httpx costs a poller about 2 ms of
    the load generator's CPU a request, which on two cores is what 200 pollers would measure."""
    writer.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = CONTENT_LENGTH.search(head)
    if not head.startswith(b"HTTP/1.1 ") or length is None:
        raise ValueError(f"not an answer this client reads: {head[:200]!r}")
    await reader.readexactly(int(length[1]))
    return int(head[9:12])


def one_connection(url: str) -> httpx.AsyncClient:
    """A client of its own for each poller and each submitter, holding one kept-alive connection:
    one client shared by 250 connections spent most of the load generator's time in httpcore's
    pool bookkeeping (a scan of every connection per request) and opened a new connection for
    most requests (it keeps 20 alive), so it measured itself more than the API."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=url, timeout=60, limits=limits, verify=TLS)


async def run_load(url: str, pollers: int, submissions: int, seconds: float) -> tuple[Tally, Tally]:
    address = httpx.URL(url)
    host, port = address.host, address.port
    files = [("content", ("c.png", CONTENT)), ("style", ("s.jpg", STYLE))]
    async with one_connection(url) as client:
        first = await client.post("/jobs", files=files, data={"params": "{}"})
    first.raise_for_status()
    ids = [first.json()["id"]]
    polls, submits = Tally(), Tally()
    deadline = time.perf_counter() + seconds
    left = [submissions]

    async def submitter() -> None:
        async with one_connection(url) as client:
            while left[0] > 0:
                left[0] -= 1
                began = time.perf_counter()
                try:
                    answer = await client.post("/jobs", files=files, data={"params": '{"iterations": 10}'})
                    submits.add(began, answer.status_code)
                    if answer.status_code == 202:
                        ids.append(answer.json()["id"])
                except httpx.HTTPError as exc:
                    submits.add(began, None, type(exc).__name__)

    async def poller(index: int) -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                connection = connection or await asyncio.open_connection(host, port)
                polls.add(began, await raw_get(*connection, f"/jobs/{ids[index % len(ids)]}"))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                polls.add(began, None, type(exc).__name__)
                if connection is not None:
                    connection[1].close()
                connection = None
        if connection is not None:
            connection[1].close()

    submitters = min(SUBMIT_CONCURRENCY, submissions)
    await asyncio.gather(*(poller(i) for i in range(pollers)), *(submitter() for _ in range(submitters)))
    return polls, submits


def measure(args: argparse.Namespace, processes: int, uploads: int) -> dict[str, Any]:
    """One run on a fresh stack: its figures."""
    # One client submits everything: the per-key limits (the open service is one tenant) are lifted.
    env = {
        "NST_MAX_QUEUED_JOBS": str(args.submissions + 10),
        "NST_MAX_ACTIVE_JOBS_PER_KEY": str(args.submissions + 10),
        "NST_MAX_SUBMISSIONS_PER_MINUTE": str(args.submissions + 10),
        "NST_API_PROCESSES": str(processes),
        "NST_MAX_CONCURRENT_UPLOADS": str(uploads),
    }
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp), env, workers=0) as service:
        assert service.api is not None
        before = rss_mib(service.api.pid)
        polls, submits = asyncio.run(run_load(service.url, args.pollers, args.submissions, args.seconds))
        after = rss_mib(service.api.pid)
        alive = service.api.poll() is None and httpx.get(f"{service.url}/healthz").status_code == 200
    return {
        "api_processes": processes,
        "max_concurrent_uploads": uploads,
        "polls": polls.summary(),
        "submits": submits.summary(),
        "rss_before_mib": round(before),
        "rss_after_mib": round(after),
        "alive": alive,
    }


def uploads_label(uploads: int) -> str:
    return "unbounded" if uploads >= UNBOUNDED else str(uploads)


def table_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    """One run's column of the side-by-side table."""
    rows = [
        ("API processes", str(run["api_processes"])),
        ("uploads in progress per process", uploads_label(run["max_concurrent_uploads"])),
    ]
    for kind, label in (("polls", "GET /jobs/{id}"), ("submits", "POST /jobs")):
        tally = run[kind]
        rows += [
            (f"{label} requests", str(tally["requests"])),
            (f"{label} requests/s", f"{tally['rps']:.1f}"),
            (f"{label} p50 ms", f"{tally['p50_ms']:.0f}"),
            (f"{label} p99 ms", f"{tally['p99_ms']:.0f}"),
            (f"{label} statuses", " ".join(f"{n}x{s}" for s, n in sorted(tally["statuses"].items()))),
            (f"{label} transport errors", str(tally["transport_errors"])),
        ]
    rows.append(("API memory before / after (MiB)", f"{run['rss_before_mib']} / {run['rss_after_mib']}"))
    rows.append(("API alive afterwards", str(run["alive"])))
    return rows


def print_runs(runs: list[tuple[str, dict[str, Any]]], args: argparse.Namespace) -> None:
    print(
        f"{args.pollers} pollers for {args.seconds:.0f} s + a burst of {args.submissions} submissions "
        f"({SUBMIT_CONCURRENCY} in flight)"
    )
    columns = [table_rows(run) for _, run in runs]
    width = max(len(name) for name, _ in columns[0])
    print(f"{'':{width}}  " + "  ".join(f"{name:>16}" for name, _ in runs))
    for index, (name, _) in enumerate(columns[0]):
        print(f"{name:{width}}  " + "  ".join(f"{column[index][1]:>16}" for column in columns))
    for name, run in runs:
        for kind in ("polls", "submits"):
            if run[kind]["error_kinds"]:
                print(f"{name}: {kind} transport errors: {run[kind]['error_kinds']}")
    print(json.dumps(dict(runs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--submissions", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--api-processes", type=int, default=None, help="default: as `nst api`")
    parser.add_argument(
        "--max-concurrent-uploads", type=int, default=None, help="per API process (default: the service's)"
    )
    parser.add_argument("--compare", action="store_true", help="before (one process, unbounded) and after")
    args = parser.parse_args()
    processes = api_processes(args.api_processes)
    uploads = args.max_concurrent_uploads or Settings().max_concurrent_uploads
    runs = []
    if args.compare:
        runs.append(("before", measure(args, 1, UNBOUNDED)))
    runs.append(("after" if args.compare else "run", measure(args, processes, uploads)))
    print_runs(runs, args)


if __name__ == "__main__":
    main()
