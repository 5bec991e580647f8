"""The event hub and the event stream's edges, seen from inside a real uvicorn server (in a thread
of this process) with a real redis-server: a stream whose client goes away leaves nothing behind,
a client that falls behind catches up from the stream itself, a stream whose job disappears
closes, a bad entry stops nobody, a stale run cannot write, and `nst api` stops on SIGTERM with
streams open."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.event_hub import OVERFLOW, EventHub
from jobs.keys import events_key, job_key
from jobs.reader import JobReader
from jobs.record import JobRecord, new_job_id
from jobs.settings import Settings
from jobs.store import JobStore
from tests.services import HANG, RedisServer
from worker.local import free_port, nst_command, stop_processes, wait_for_http


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    """A database of the module's own: the app below and an `nst api` use it across tests."""
    return redis_server.url(redis_server.new_database())


@pytest.fixture(scope="module")
def app_url(redis_url: str) -> Iterator[tuple[FastAPI, str]]:
    app = create_app(Settings(redis_url=redis_url, sse_heartbeat_seconds=0.2))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + HANG
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def queued_job(redis_url: str) -> str:
    store = JobStore.from_url(redis_url, 3600)
    record = JobRecord(id=new_job_id(), params={"iterations": 10}, style_count=1)
    return store.create(record, b"content", [b"style"]).id


def running_job(redis_url: str, token: str = "token") -> str:
    job_id = queued_job(redis_url)
    claimed, _ = JobStore.from_url(redis_url, 3600).claim(job_id, {"status": "running", "attempts": 1}, token, 60)
    assert claimed
    return job_id


def open_streams(url: str, job_id: str, count: int) -> tuple[list[Any], list[Iterator[str]]]:
    """`count` streams of the job, each read up to its first event (`job`). The line iterators
    must be kept: dropping one closes its connection."""
    streams = [httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=30) for _ in range(count)]
    lines = [stream.__enter__().iter_lines() for stream in streams]
    for reader in lines:
        assert any(line == "event: job" for line, _ in zip(reader, range(10), strict=False))
    return streams, lines


def wait_until(condition: Callable[[], bool], timeout: float = HANG) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_closed_streams_leave_no_subscription_behind(app_url: tuple[FastAPI, str], redis_url: str) -> None:
    app, url = app_url
    hub: EventHub = app.state.hub
    job_id = queued_job(redis_url)
    streams, _lines = open_streams(url, job_id, 10)
    assert hub.subscriber_count == 10 and set(hub.feeds) == {job_id}
    for stream in streams:
        stream.__exit__(None, None, None)
    assert wait_until(lambda: hub.subscriber_count == 0 and hub.feeds == {})


def test_a_stream_whose_job_disappears_closes(app_url: tuple[FastAPI, str], redis_url: str) -> None:
    app, url = app_url
    job_id = queued_job(redis_url)
    streams, lines = open_streams(url, job_id, 1)
    JobStore.from_url(redis_url, 3600).redis.delete(job_key(job_id), events_key(job_id))  # expired, say
    rest = []
    deadline = time.monotonic() + HANG  # keep-alives come every 0.2 s: the loop sees the time pass
    for line in lines[0]:  # until the server closes the stream
        rest.append(line)
        assert time.monotonic() < deadline, "the stream of a deleted job stayed open"
    assert "event: end" not in rest
    streams[0].__exit__(None, None, None)
    assert httpx.get(f"{url}/jobs/{job_id}/events").status_code == 404
    assert wait_until(lambda: app.state.hub.subscriber_count == 0)


def test_an_unreadable_entry_holds_back_no_stream(app_url: tuple[FastAPI, str], redis_url: str) -> None:
    _, url = app_url
    broken, fine = running_job(redis_url), running_job(redis_url)
    store = JobStore.from_url(redis_url, 3600)
    streams, lines = open_streams(url, broken, 1)
    more_streams, more_lines = open_streams(url, fine, 1)
    store.redis.xadd(events_key(broken), {"type": "progress", "data": "{not json"})
    store.publish(broken, "token", {"iteration": 2}, {"iteration": 2, "total": 10})
    store.publish(fine, "token", {"iteration": 3}, {"iteration": 3, "total": 10})
    assert store.finish(fine, "succeeded", {}, "token")
    seen = {job: [] for job in (broken, fine)}
    for job_id, reader in ((broken, lines[0]), (fine, more_lines[0])):
        for line in reader:
            seen[job_id].append(line)
            if line.startswith("data: ") and ('"iteration":2' in line or '"status":"succeeded"' in line):
                break
    assert any('"iteration":2' in line for line in seen[broken]) and not any(
        "not json" in line for line in seen[broken]
    )
    assert "event: end" in seen[fine]
    for stream in (*streams, *more_streams):
        stream.__exit__(None, None, None)


def test_a_future_or_out_of_range_last_event_id_gets_the_whole_job(
    app_url: tuple[FastAPI, str], redis_url: str
) -> None:
    _, url = app_url
    job_id = running_job(redis_url)
    for last_event_id in ("99999999999999-0", "18446744073709551616-0", f"{2**64 - 1}-{2**64}"):
        with httpx.stream("GET", f"{url}/jobs/{job_id}/events", headers={"Last-Event-ID": last_event_id}) as answer:
            assert answer.status_code == 200
            assert any(line == "event: job" for line, _ in zip(answer.iter_lines(), range(10), strict=False))


def test_a_run_that_lost_the_job_writes_nothing(redis_url: str) -> None:
    store = JobStore.from_url(redis_url, 3600)
    job_id = running_job(redis_url, token="current")
    before = store.redis.xlen(events_key(job_id))
    written = store.publish(job_id, "stale", {"iteration": 99}, {"iteration": 99, "total": 10}, snapshot=(99, b"x"))
    assert not written and store.redis.xlen(events_key(job_id)) == before
    assert store.get(job_id).iteration == 0  # type: ignore[union-attr]
    assert store.publish(job_id, "current", {"iteration": 5}, {"iteration": 5, "total": 10})
    assert store.finish(job_id, "succeeded", {}, "current")
    assert not store.publish(job_id, "current", {"iteration": 6}, {"iteration": 6, "total": 10})


@pytest.mark.service  # an `nst api` of its own
def test_nst_api_stops_on_sigterm_with_streams_open(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"NST_REDIS_URL": redis_url}
    api = subprocess.Popen(nst_command("api", "--port", str(port)), env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", api, timeout=HANG)
        _streams, _lines = open_streams(f"http://127.0.0.1:{port}", queued_job(redis_url), 3)
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=HANG)  # the streams never end by themselves: the API closes them
    finally:
        stop_processes([api])
    assert api.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled


def test_a_subscriber_that_overflows_is_told_to_read_the_stream(redis_url: str) -> None:
    async def scenario() -> None:
        reader = JobReader.from_url(redis_url)
        hub = EventHub(redis_url, reader, block_ms=100, queue_size=3)
        hub.start()
        job_id = running_job(redis_url)
        subscription = hub.subscribe(job_id, b"0-0")
        store = JobStore.from_url(redis_url, 3600)
        for iteration in range(1, 6):
            store.publish(job_id, "token", {"iteration": iteration}, {"iteration": iteration, "total": 10})
        deadline = time.monotonic() + HANG
        while subscription.queue.empty() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        received = [subscription.queue.get_nowait() for _ in range(subscription.queue.qsize())]
        assert received[-1] is OVERFLOW  # seven entries (queued, running, five progress) for a queue of three
        hub.unsubscribe(subscription)
        assert hub.feeds == {}
        await hub.stop()
        await reader.close()

    asyncio.run(scenario())
