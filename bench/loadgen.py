"""Load generators shared by the benchmarks: wrk where installed (a load generator in C leaves
the cores to the server), else httpx."""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass

import httpx


@dataclass
class PollLoad:
    tool: str
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int


def poll_load(url: str, pollers: int, seconds: float, headers: dict[str, str] | None = None) -> PollLoad:
    """`pollers` connections GETting `url` as fast as they can (a 304 counts as an answer)."""
    if shutil.which("wrk"):
        return _wrk(url, pollers, seconds, headers or {})
    return asyncio.run(_httpx_load(url, pollers, seconds, headers or {}))


def _wrk(url: str, pollers: int, seconds: float, headers: dict[str, str]) -> PollLoad:
    header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
    out = subprocess.run(
        ["wrk", "-t2", f"-c{pollers}", f"-d{seconds:.0f}s", "--latency", *header_args, url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip

    def ms(label: str) -> float:
        value = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out)
        assert value, out
        return float(value[1]) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[value[2]]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: .*", out)
    errors = int(bad[1]) if bad else 0
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors[0]))
    assert rps, out
    return PollLoad("wrk", float(rps[1]), ms("50%"), ms("99%"), errors)


async def _httpx_load(url: str, pollers: int, seconds: float, headers: dict[str, str]) -> PollLoad:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=pollers, max_keepalive_connections=pollers)
    async with httpx.AsyncClient(timeout=10, limits=limits, headers=headers) as client:

        async def poller() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    answer = await client.get(url)
                    errors += answer.status_code not in (200, 304)
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(poller() for _ in range(pollers)))
    return PollLoad(
        "httpx",
        len(latencies) / seconds,
        statistics.median(latencies) * 1e3,
        statistics.quantiles(latencies, n=100)[98] * 1e3,
        errors,
    )


def print_rounds(rounds: dict[str, list[PollLoad]], pollers: int, seconds: float, versus: str) -> None:
    """Each route's median round, against the first route's, then the figures as JSON."""
    import json

    loads = {
        name: sorted(runs, key=lambda load: load.requests_per_second)[len(runs) // 2] for name, runs in rounds.items()
    }
    first = next(iter(loads.values()))
    count = len(first_runs) if (first_runs := next(iter(rounds.values()))) else 0
    print(
        f"{pollers} concurrent pollers, {count} rounds of {seconds:.0f} s per route (the median "
        f"round shown), one uvicorn process each, {first.tool}"
    )
    print(f"{'route':42} {'req/s':>8} {versus:>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}  rounds req/s")
    for name, load in loads.items():
        each = " ".join(f"{run.requests_per_second:.0f}" for run in rounds[name])
        print(
            f"{name:42} {load.requests_per_second:8.0f} {load.requests_per_second / first.requests_per_second:7.2f}x "
            f"{load.p50_ms:8.1f} {load.p99_ms:8.1f} {load.errors:7d}  {each}"
        )
    print(json.dumps({name: round(load.requests_per_second) for name, load in loads.items()}))
