"""What the HTTP metrics middleware (api/metrics.py) adds to one request, measured in-process: the
same minimal ASGI answer with and without the middleware around it, no network, no Redis.

    python bench/metrics_overhead.py [--requests 200000]

bench/polling.py shows the same over HTTP, against a real poll, where the noise is larger than it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402
from starlette.routing import Route  # noqa: E402
from starlette.types import Message, Receive, Scope, Send  # noqa: E402

from api.metrics import HttpMetrics, HttpMetricsMiddleware  # noqa: E402

ROUTE = Route("/jobs/{job_id}", lambda request: None)
BODY = b'{"id": "0123456789abcdef0123456789abcdef", "status": "running"}'


async def answer(scope: Scope, receive: Receive, send: Send) -> None:
    """A poll's answer without its work: the router's mark in the scope, a header, a body."""
    scope["route"] = ROUTE
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})


async def receive() -> Message:
    return {"type": "http.request", "body": b""}


async def send(message: Message) -> None:
    return None


async def per_request_us(app: object, requests: int) -> float:
    call = app.__call__  # type: ignore[attr-defined]
    start = time.perf_counter()
    for _ in range(requests):
        scope = {"type": "http", "method": "GET", "path": "/jobs/0123456789abcdef0123456789abcdef", "headers": []}
        await call(scope, receive, send)
    return (time.perf_counter() - start) / requests * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    wrapped = HttpMetricsMiddleware(answer, HttpMetrics(CollectorRegistry()), routes=[ROUTE])
    bare, measured = [], []
    for _ in range(args.rounds):  # in turn, so a slow moment of the machine falls on both
        bare.append(await per_request_us(answer, args.requests))
        measured.append(await per_request_us(wrapped, args.requests))
    plain, metered = statistics.median(bare), statistics.median(measured)
    print(f"{args.requests} requests x {args.rounds} rounds, median round, per request:")
    print(f"  minimal ASGI answer      {plain:6.2f} us")
    print(f"  with metrics middleware  {metered:6.2f} us  (+{metered - plain:.2f} us)")


if __name__ == "__main__":
    asyncio.run(main())
