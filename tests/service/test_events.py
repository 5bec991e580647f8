"""Live job events (Server-Sent Events), the loss history and conditional polling, through a real
redis-server, Celery worker and uvicorn (the shared stack: keep-alives every 0.5 s)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx

from jobs.keys import events_key
from jobs.store import JobStore
from tests.conftest import SAMPLES
from tests.services import HANG, Service, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
TINY = {"height": 32, "width": 32}
LONG = {"iterations": 20000, **TINY}  # runs until canceled


@dataclass
class Event:
    id: str | None
    kind: str
    data: Any


def read_events(
    url: str,
    headers: dict[str, str] | None = None,
    until: str | None = "end",
    limit: int = 10_000,
    connected: threading.Semaphore | None = None,
    kept_alive: threading.Semaphore | None = None,
) -> tuple[int, list[Event], list[str]]:
    """(status, the events, the comment lines) of one connection, read until an event of kind
    `until` (included) or until the server closes the stream; `connected` is released once the
    first event has arrived (the client is subscribed by then), `kept_alive` at the first comment."""
    events: list[Event] = []
    comments: list[str] = []
    fields: dict[str, str] = {}
    deadline = time.monotonic() + HANG  # keep-alives come every 0.5 s: the loop sees the time pass
    with httpx.stream("GET", url, headers=headers, timeout=HANG) as answer:
        if answer.status_code != 200:
            return answer.status_code, events, comments
        assert answer.headers["content-type"].startswith("text/event-stream")
        assert answer.headers["cache-control"] == "no-cache"
        for line in answer.iter_lines():
            assert time.monotonic() < deadline, f"{url}: still open after {HANG} s"
            if line.startswith(":"):
                comments.append(line)
                if kept_alive is not None and len(comments) == 1:
                    kept_alive.release()
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "event" in fields:
                events.append(Event(fields.get("id"), fields["event"], json.loads(fields["data"])))
                fields = {}
                if connected is not None and len(events) == 1:
                    connected.release()
                if events[-1].kind == until or len(events) >= limit:
                    break
            else:
                fields = {}  # e.g. the `retry:` block
    return 200, events, comments


def test_a_stream_shows_the_job_its_progress_its_snapshots_and_its_end_in_order(
    client: httpx.Client, service: Service
) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 120, **TINY}).json()
    status, events, _ = read_events(f"{service.url}/jobs/{job['id']}/events")
    assert status == 200
    kinds = [e.kind for e in events]
    assert kinds[0] == "job" and events[0].data["id"] == job["id"]
    assert kinds[-1] == "end" and kinds.count("end") == 1
    snapshots = [e.data for e in events if e.kind == "snapshot"]
    # A snapshot the worker made before this client connected is in the first event, the job.
    before = [s["iteration"] for s in events[0].data["snapshots"]]
    assert before + [s["iteration"] for s in snapshots] == [1, 50, 100]
    for snap in snapshots:
        assert snap["url"] == f"/jobs/{job['id']}/snapshots/{snap['iteration']}"
        assert client.get(snap["url"]).status_code == 200
    iterations = [e.data["iteration"] for e in events if e.kind == "progress"]
    assert iterations == sorted(iterations) and iterations[-1] == 120
    progress = next(e.data for e in events if e.kind == "progress")
    assert {"iteration", "total", "fraction", "losses", "eta_seconds", "iterations_per_second"} <= set(progress)
    if events[0].data["status"] == "queued":
        assert {"status": "running", "attempt": 1} in [e.data for e in events if e.kind == "status"]
    ids = [e.id for e in events]
    assert all(ids) and len(set(ids)) == len(ids), "every event has its own id"
    final = events[-1].data
    assert final["status"] == "succeeded" and final["result_url"] == f"/jobs/{job['id']}/result"
    assert final == client.get(f"/jobs/{job['id']}").json()


def test_a_reconnect_with_last_event_id_resumes_without_loss_or_repeats(client: httpx.Client, service: Service) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 150, **TINY}).json()
    url = f"{service.url}/jobs/{job['id']}/events"
    _, first, _ = read_events(url, until="snapshot")  # dropped after the first snapshot
    assert first[0].kind == "job" and first[-1].kind == "snapshot"
    time.sleep(1.0)  # events keep coming meanwhile
    _, rest, _ = read_events(url, {"Last-Event-ID": first[-1].id})
    assert rest and rest[0].kind != "job" and rest[-1].kind == "end"
    received = [e.id for e in first[1:] + rest]
    store = JobStore.from_url(service.redis_url, 3600)
    written = [raw.decode() for raw, _ in store.redis.xrange(events_key(job["id"]), min=f"({first[0].id}")]
    assert received == written, "every event after the first connection's state, once, in order"
    # The job has ended and the client has had its last event: 204 tells EventSource to stop.
    assert read_events(url, {"Last-Event-ID": rest[-1].id})[0] == 204


def test_a_finished_job_s_stream_gives_its_final_state_at_once(client: httpx.Client, service: Service) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 2, **TINY}).json()
    poll(client, job["id"], is_final)
    # Read until the server closes the stream: it sends the final state and ends, waiting for nothing.
    status, events, comments = read_events(f"{service.url}/jobs/{job['id']}/events", until=None)
    assert status == 200 and [e.kind for e in events] == ["end"] and comments == []
    assert events[0].data["status"] == "succeeded"


def test_a_client_too_far_behind_gets_the_whole_job_again(client: httpx.Client, service: Service) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 30, **TINY}).json()
    poll(client, job["id"], is_final)
    _, events, _ = read_events(f"{service.url}/jobs/{job['id']}/events", {"Last-Event-ID": "1-0"})
    assert [e.kind for e in events] == ["end"]  # older than anything kept: the state, not a replay
    garbled = read_events(f"{service.url}/jobs/{job['id']}/events", {"Last-Event-ID": "not an id"})[1]
    assert [e.kind for e in garbled] == ["end"]


def test_cancel_is_announced_as_pending_then_as_the_end(client: httpx.Client, service: Service) -> None:
    job = submit(client, COFFEE, [STARRY], LONG).json()
    poll(client, job["id"], lambda j: j["status"] == "running")
    seen: list[Event] = []
    connected = threading.Semaphore(0)

    def watch() -> None:
        seen.extend(read_events(f"{service.url}/jobs/{job['id']}/events", connected=connected)[1])

    watcher = threading.Thread(target=watch)
    watcher.start()
    assert connected.acquire(timeout=HANG)
    answer = client.post(f"/jobs/{job['id']}/cancel")
    assert answer.status_code == 202
    body = answer.json()
    assert body["cancel_requested"] is True or body["status"] == "canceled", body
    watcher.join(timeout=HANG)
    assert not watcher.is_alive(), "the stream did not end"
    statuses = [e.data for e in seen if e.kind == "status"]
    assert {"status": "running", "cancel_requested": True} in statuses
    assert seen[-1].kind == "end" and seen[-1].data["status"] == "canceled"
    assert seen[-1].data["cancel_requested"] is False  # only while the cancel is pending


def test_idle_streams_get_keep_alive_comments_and_many_clients_get_the_same_events(
    client: httpx.Client, service: Service
) -> None:
    busy = submit(client, COFFEE, [STARRY], LONG).json()
    poll(client, busy["id"], lambda j: j["status"] == "running")
    waiting = submit(client, COFFEE, [STARRY], {"iterations": 60, **TINY}).json()
    assert waiting["status"] == "queued"
    results: list[tuple[int, list[Event], list[str]]] = []
    kept_alive = threading.Semaphore(0)

    def watch() -> None:
        results.append(read_events(f"{service.url}/jobs/{waiting['id']}/events", kept_alive=kept_alive))

    watchers = [threading.Thread(target=watch) for _ in range(20)]
    for watcher in watchers:
        watcher.start()
    for _ in watchers:  # the queued job's streams are idle until each has had a keep-alive
        assert kept_alive.acquire(timeout=HANG)
    client.post(f"/jobs/{busy['id']}/cancel")
    for watcher in watchers:
        watcher.join(timeout=HANG)
    assert len(results) == 20
    stream = JobStore.from_url(service.redis_url, 3600).redis
    for status, events, comments in results:
        assert status == 200 and ": keep-alive" in comments
        assert events[0].kind == "job" and events[-1].kind == "end" and events[-1].data["status"] == "succeeded"
        # Each connected at its own moment: after its `job` event, it got every entry, once.
        written = [raw.decode() for raw, _ in stream.xrange(events_key(waiting["id"]), min=f"({events[0].id}")]
        assert [e.id for e in events[1:]] == written


def test_an_unknown_job_s_stream_is_a_404_problem(service: Service) -> None:
    for job_id in ("0" * 32, "not-an-id"):
        answer = httpx.get(f"{service.url}/jobs/{job_id}/events")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("application/problem+json")


def test_a_diverging_job_still_ends_and_its_losses_read_as_null(client: httpx.Client, service: Service) -> None:
    # 1e39 is a finite float here and infinity in the network's float32: the losses become inf, then NaN.
    job = submit(client, COFFEE, [STARRY], {"iterations": 30, "style_weight": 1e39, **TINY}).json()
    status, events, _ = read_events(f"{service.url}/jobs/{job['id']}/events")
    assert status == 200 and events[-1].kind == "end", events
    progress = [e.data for e in events if e.kind == "progress"]
    assert progress and progress[-1]["losses"]["total"] is None
    answer = client.get(f"/jobs/{job['id']}")
    assert answer.status_code == 200 and answer.json()["status"] == events[-1].data["status"]
    assert client.get(f"/jobs/{job['id']}/losses").status_code == 200


def test_the_loss_history_covers_the_whole_job(client: httpx.Client) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 120, **TINY}).json()
    poll(client, job["id"], is_final)
    history = client.get(f"/jobs/{job['id']}/losses").json()
    assert set(history) == {"iteration", "total", "content", "style"}
    assert len({len(column) for column in history.values()}) == 1
    assert history["iteration"][0] == 1 and history["iteration"][-1] == 120
    assert history["iteration"] == sorted(set(history["iteration"]))
    assert {1, 50, 100} <= set(history["iteration"])
    assert all(value > 0 for value in history["total"])
    assert client.get(f"/jobs/{'0' * 32}/losses").status_code == 404


def test_if_none_match_with_the_current_etag_is_304(client: httpx.Client) -> None:
    job = submit(client, COFFEE, [STARRY], {"iterations": 2, **TINY}).json()
    done = poll(client, job["id"], is_final)
    first = client.get(f"/jobs/{job['id']}")
    etag = first.headers["etag"]
    assert first.json() == done and first.headers["cache-control"] == "no-cache"
    unchanged = client.get(f"/jobs/{job['id']}", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b"" and unchanged.headers["etag"] == etag
    assert client.get(f"/jobs/{job['id']}", headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    assert client.get(f"/jobs/{job['id']}", headers={"If-None-Match": '"stale"'}).status_code == 200
    other = submit(client, COFFEE, [STARRY], {"iterations": 2, **TINY}).json()
    assert client.get(f"/jobs/{other['id']}").headers["etag"] != etag
