"""The event hub's bookkeeping, seen from inside a real uvicorn server (in a thread of this process)
with a real redis-server: a stream whose client goes away leaves nothing behind, and a client
that falls behind catches up from the stream itself."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.event_hub import OVERFLOW, EventHub
from api.reader import JobReader
from worker.keys import JobRecord, new_job_id
from worker.local import free_port, start_redis, stop_processes
from worker.settings import Settings
from worker.state import JobStore


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    process = start_redis(port, tmp_path_factory.mktemp("hub-redis"))
    yield f"redis://127.0.0.1:{port}/0"
    stop_processes([process])


@pytest.fixture(scope="module")
def app_url(redis_url: str) -> Iterator[tuple[FastAPI, str]]:
    app = create_app(Settings(redis_url=redis_url, sse_heartbeat_seconds=0.2))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def queued_job(redis_url: str) -> str:
    store = JobStore.from_url(redis_url, 3600)
    record = JobRecord(id=new_job_id(), params={"iterations": 10}, style_count=1)
    return store.create(record, b"content", [b"style"]).id


def test_closed_streams_leave_no_subscription_behind(app_url: tuple[FastAPI, str], redis_url: str) -> None:
    app, url = app_url
    hub: EventHub = app.state.hub
    job_id = queued_job(redis_url)
    streams = [httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=30) for _ in range(10)]
    answers = [stream.__enter__() for stream in streams]
    for answer in answers:
        lines = answer.iter_lines()
        assert any(line == "event: job" for line, _ in zip(lines, range(10), strict=False))
    assert hub.subscriber_count == 10 and set(hub.feeds) == {job_id}
    for stream in streams:
        stream.__exit__(None, None, None)
    deadline = time.monotonic() + 10
    while hub.subscriber_count and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hub.subscriber_count == 0 and hub.feeds == {}


def test_a_subscriber_that_overflows_is_told_to_read_the_stream(redis_url: str) -> None:
    async def scenario() -> None:
        reader = JobReader.from_url(redis_url)
        hub = EventHub(redis_url, reader, block_ms=100, queue_size=3)
        hub.start()
        job_id = queued_job(redis_url)
        subscription = hub.subscribe(job_id, b"0-0")
        store = JobStore.from_url(redis_url, 3600)
        for iteration in range(1, 6):
            store.publish(job_id, {"iteration": iteration}, {"iteration": iteration, "total": 10})
        deadline = time.monotonic() + 10
        while subscription.queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        received = [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]
        assert received[-1] is OVERFLOW  # six entries (queued, then five progress) for a queue of three
        hub.unsubscribe(subscription)
        assert hub.feeds == {}
        await hub.stop()
        await reader.close()

    asyncio.run(scenario())
