"""1,000 Server-Sent Event streams on one API process, all watching one running job.

    python bench/events.py [--clients 1000 --iterations 300 --snapshot-every 20]

Starts its own redis-server, one CPU worker and one API process on 127.0.0.1 (random weights).
A long job keeps the worker busy while the clients connect to a second, queued job's
`/jobs/{id}/events`; once every client has its first event the long job is canceled and the
watched one runs. Prints: how many clients received every snapshot event, in order, and the
`end`; the API's resident memory before and after the clients connected (per stream); its Redis
connections; and the delay from the worker's write to each client (an event's id is the Redis
time of its write, on this same clock), p50 and p99, for snapshot events and for all events.

The clients are plain asyncio sockets in this process (an HTTP library would spend more of the
two cores than the server does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import Service, poll, serve, submit  # noqa: E402

SAMPLES = ROOT / "examples" / "images"
IMAGES = (SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"])


@dataclass
class Watcher:
    """One client's view of the stream: each event's kind, its id's write time and when it came."""

    connected: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, written, received)
    snapshots: list[int] = field(default_factory=list)
    ended: bool = False
    error: str | None = None


async def watch(port: int, job_id: str, watcher: Watcher) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(status.decode().strip())
        event_id, kind = "", ""
        while not watcher.ended:
            line = (await reader.readline()).decode()
            if not line:
                raise RuntimeError("the stream closed before the end")
            line = line.rstrip("\r\n")
            # Chunked transfer: chunk-size lines are hex digits alone; SSE lines have a colon.
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                received = time.time()
                written = int(event_id.split("-")[0]) / 1000
                watcher.events.append((kind, written, received))
                if kind == "snapshot":
                    watcher.snapshots.append(json.loads(line[6:])["iteration"])
                elif kind == "end":
                    watcher.ended = True
                watcher.connected.set()
                kind = ""
        writer.close()
    except Exception as exc:  # reported, not raised: one bad client must not hide the others
        watcher.error = f"{type(exc).__name__}: {exc}"
        watcher.connected.set()


def resident_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


async def run(service: Service, clients: int, params: dict[str, int]) -> dict[str, object]:
    assert service.api is not None
    port = int(service.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=service.url, timeout=60) as http:
        busy = submit(http, *IMAGES, {"iterations": 20000, "height": 32, "width": 32}).json()["id"]
        poll(http, busy, lambda j: j["status"] == "running", timeout=120)
        target = submit(http, *IMAGES, params).json()["id"]
        store = redis.Redis.from_url(service.redis_url)
        connections_before = len(store.client_list())
        rss_before = resident_kib(service.api.pid)
        watchers = [Watcher() for _ in range(clients)]
        tasks = [asyncio.create_task(watch(port, target, w)) for w in watchers]
        await asyncio.wait_for(asyncio.gather(*(w.connected.wait() for w in watchers)), 300)
        await asyncio.sleep(2)  # let the server settle before reading its memory
        rss_after = resident_kib(service.api.pid)
        connections_after = len(store.client_list())
        http.post(f"/jobs/{busy}/cancel")
        await asyncio.wait_for(asyncio.gather(*tasks), 3600)
        final = http.get(f"/jobs/{target}").json()
    expected = [s["iteration"] for s in final["snapshots"]]
    complete = [w for w in watchers if w.error is None and w.ended and w.snapshots == expected]
    snapshot_delays = [(r - t) * 1e3 for w in watchers for kind, t, r in w.events if kind == "snapshot"]
    all_delays = [(r - t) * 1e3 for w in watchers for kind, t, r in w.events if kind != "job"]
    errors = sorted({w.error for w in watchers if w.error})
    return {
        "clients": clients,
        "complete": len(complete),
        "snapshot_events_per_client": len(expected),
        "events_per_client": statistics.median(len(w.events) for w in watchers),
        "errors": errors[:3],
        "api_rss_mib_before": round(rss_before / 1024, 1),
        "api_rss_mib_after": round(rss_after / 1024, 1),
        "api_kib_per_stream": round((rss_after - rss_before) / clients, 1),
        "redis_connections_before": connections_before,
        "redis_connections_after": connections_after,
        "snapshot_delay_ms_p50": round(percentile(snapshot_delays, 50), 1),
        "snapshot_delay_ms_p99": round(percentile(snapshot_delays, 99), 1),
        "event_delay_ms_p50": round(percentile(all_delays, 50), 1),
        "event_delay_ms_p99": round(percentile(all_delays, 99), 1),
        "job_status": final["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--snapshot-every", type=int, default=20)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, max(soft, 4 * args.clients + 1024))  # the API and this process, inherited
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    params = {"iterations": args.iterations, "height": args.size, "width": args.size,
              "snapshot_every": args.snapshot_every, "seed": 0}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, serve(Path(tmp)) as service:
        figures = asyncio.run(run(service, args.clients, params))
    f = figures
    print(
        f"{args.clients} event streams on one API process, one job of {args.iterations} iterations at "
        f"{args.size}x{args.size}, a snapshot every {args.snapshot_every} (CPU worker, random weights)\n"
        f"  clients that got every snapshot event, in order, and the end: {f['complete']}/{args.clients} "
        f"({f['snapshot_events_per_client']} snapshots, {f['events_per_client']} events each)\n"
        f"  API memory: {f['api_rss_mib_before']} MiB before, {f['api_rss_mib_after']} MiB with the streams "
        f"open: {f['api_kib_per_stream']} KiB a stream\n"
        f"  Redis connections: {f['redis_connections_before']} before, {f['redis_connections_after']} with the "
        f"streams open\n"
        f"  worker's write -> client, snapshot events: p50 {f['snapshot_delay_ms_p50']} ms, "
        f"p99 {f['snapshot_delay_ms_p99']} ms; all events: p50 {f['event_delay_ms_p50']} ms, "
        f"p99 {f['event_delay_ms_p99']} ms"
    )
    if figures["errors"]:
        print(f"  errors: {figures['errors']}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
