"""A job's live events (Server-Sent Events) and its loss history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Header
from fastapi.responses import Response, StreamingResponse

from api.auth import CallerDep
from api.deps import HubDep, ReaderDep, SettingsDep, load_record
from api.event_hub import OVERFLOW, ZERO_ID, Event, EventHub, build_events, id_key, parse_event_id, sse
from api.openapi import UNAVAILABLE, event_stream_content, problems
from api.problems import not_found
from jobs.reader import JobReader
from jobs.record import TERMINAL
from jobs.view import LossHistory

router = APIRouter(prefix="/jobs", tags=["jobs"])

RETRY_MS = 2000  # how long EventSource waits before it reconnects
EVENTS_DOC = """Server-Sent Events, each with an `id` (send it back as `Last-Event-ID` to resume):
- `job`: the whole job (as GET /jobs/{id}), first on a new connection;
- `status`: `{"status": ..., "attempt"?, "cancel_requested"?}` at each status change and cancel request;
- `progress`: `{"iteration", "total", "fraction", "losses", "eta_seconds", "iterations_per_second"}`, every
  `snapshot_every / 5` iterations (at most twice a second), at each snapshot and at the last iteration;
- `snapshot`: `{"iteration", "url"}` once the snapshot can be fetched;
- `end`: the whole finished job, last; then the stream closes.
Comment lines (`: keep-alive`) come every 15 s when nothing else does."""


STREAM_ANSWER: dict[str, Any] = {"description": EVENTS_DOC, "content": event_stream_content("one Server-Sent Event")}
NOTHING_MORE = "the job has ended and Last-Event-ID names its last event: nothing more will come"
EVENTS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: STREAM_ANSWER,
    204: {"description": NOTHING_MORE},
    **problems(e404="no such job", e503=UNAVAILABLE),
}


@router.get(
    "/{job_id}/events",
    operation_id="job_events",
    response_class=StreamingResponse,
    responses=EVENTS_RESPONSES,
)
async def job_events(
    job_id: str,
    reader: ReaderDep,
    hub: HubDep,
    settings: SettingsDep,
    caller: CallerDep,
    last_event_id: Annotated[
        str | None, Header(description="the id of the last event received; what came after it is sent")
    ] = None,
) -> Response:
    """The job's events as they happen: status changes, progress, snapshots, and its end."""
    job, first, last = await reader.job_with_position(job_id, caller)
    if job is None:
        raise not_found()
    after = parse_event_id(last_event_id, last)
    if after is not None and first is not None and id_key(after) < id_key(first):
        after = None  # what it missed has been trimmed: it gets the whole job again instead
    backlog: list[Event] = []
    if after is not None and job["status"] in TERMINAL:
        backlog = await build_events(reader, job_id, await reader.events_after(job_id, after))
        if not backlog:
            return Response(status_code=204)  # it has had the end: 204 tells EventSource not to reconnect
    stream = _stream(reader, hub, job_id, job, after, last or ZERO_ID, backlog, settings.sse_heartbeat_seconds)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream, media_type="text/event-stream", headers=headers)


async def _stream(
    reader: JobReader,
    hub: EventHub,
    job_id: str,
    job: dict[str, Any],
    after: bytes | None,
    last: bytes,
    backlog: list[Event],
    heartbeat: float,
) -> AsyncIterator[bytes]:
    yield b"retry: %d\n\n" % RETRY_MS
    if job["status"] in TERMINAL:
        text, ended = _sendable(backlog, after or ZERO_ID)
        yield text if ended else text + sse("end", job, last)  # a finished job's state, at once
        return
    position = after if after is not None else last
    subscription = hub.subscribe(job_id, position)
    try:
        if after is None:
            yield sse("job", job, last)
        pending = await build_events(reader, job_id, await reader.events_after(job_id, position))
        while True:
            text, ended = _sendable(pending, position)
            if text:
                yield text  # one write for what came together
            if ended:
                return
            position = max([position, *(event.id for event in pending)], key=id_key)
            try:
                async with asyncio.timeout(heartbeat):  # a timer, not a task per wait as wait_for makes
                    pending = [await subscription.queue.get()]
            except TimeoutError:
                if not await _still_there(reader, job_id):
                    return  # expired or deleted: the reconnect gets 404
                pending = []
                yield b": keep-alive\n\n"
                continue
            while not subscription.queue.empty():
                pending.append(subscription.queue.get_nowait())
            if any(event is OVERFLOW for event in pending):  # it fell behind: read the stream itself
                caught_up = await _catch_up(reader, job_id, position)
                if caught_up is None:
                    return  # the job is gone
                resync, position, pending = caught_up
                if resync:
                    yield resync
    finally:
        hub.unsubscribe(subscription)


async def _still_there(reader: JobReader, job_id: str) -> bool:
    """Whether the job still exists; while Redis is away, assume it does (keep the stream)."""
    try:
        return await reader.exists(job_id)
    except redis.RedisError:
        return True


def _sendable(events: list[Event], position: bytes) -> tuple[bytes, bool]:
    """The text of the events after `position` (no repeats), up to the end, and whether it came."""
    texts = []
    for event in events:
        if event is OVERFLOW or id_key(event.id) <= id_key(position):
            continue  # read from the stream and delivered by the hub too
        texts.append(event.text)
        if event.final:
            return b"".join(texts), True
    return b"".join(texts), False


async def _catch_up(reader: JobReader, job_id: str, position: bytes) -> tuple[bytes, bytes, list[Event]] | None:
    """What a client that fell behind at `position` missed: the entries since; or, if some of
    them have been trimmed away, the whole job again (a `job` event) and the entries after it.
    Returns (that `job` event or nothing, the new position, the entries); None if the job is gone."""
    job, first, last = await reader.job_with_position(job_id)
    if job is None:
        return None
    if first is not None and last is not None and id_key(first) > id_key(position):
        position, resync = last, sse("job", job, last)
    else:
        resync = b""
    return resync, position, await build_events(reader, job_id, await reader.events_after(job_id, position))


@router.get(
    "/{job_id}/losses",
    operation_id="get_loss_history",
    response_model=LossHistory,
    responses=problems(e404="no such job", e503=UNAVAILABLE),
)
async def get_loss_history(job_id: str, reader: ReaderDep, caller: CallerDep) -> dict[str, list[float]]:
    """Every loss the job has reported (at each progress event: every `snapshot_every / 5`
    iterations, at most twice a second, and at each snapshot), for charts."""
    await load_record(job_id, reader, caller)
    return await reader.losses(job_id)
