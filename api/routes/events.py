"""A job's live events (Server-Sent Events) and its loss history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import Response, StreamingResponse

from api.deps import HubDep, ReaderDep, SettingsDep, load_record
from api.event_hub import OVERFLOW, ZERO_ID, Event, EventHub, build_event, id_key, parse_event_id, sse
from api.openapi import UNAVAILABLE, problems
from api.problems import not_found
from api.reader import JobReader
from api.schemas import LossHistory
from worker.keys import TERMINAL

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


@router.get(
    "/{job_id}/events",
    operation_id="job_events",
    response_class=StreamingResponse,
    responses={
        200: {"description": EVENTS_DOC, "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        204: {"description": "the job has ended and Last-Event-ID names its last event: nothing more will come"},
    }
    | problems(e404="no such job", e503=UNAVAILABLE),
)
async def job_events(
    job_id: str,
    reader: ReaderDep,
    hub: HubDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        str | None, Header(description="the id of the last event received; what came after it is sent")
    ] = None,
) -> Response:
    """The job's events as they happen: status changes, progress, snapshots, and its end."""
    job, first, last = await reader.job_with_position(job_id)
    if job is None:
        raise not_found()
    after = parse_event_id(last_event_id)
    if after is not None and first is not None and id_key(after) < id_key(first):
        after = None  # what it missed has been trimmed: it gets the whole job again instead
    backlog: list[Event] = []
    if after is not None and job["status"] in TERMINAL:
        backlog = [await build_event(reader, job_id, raw) for raw in await reader.events_after(job_id, after)]
        if not backlog:
            return Response(status_code=204)  # tells EventSource not to reconnect
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
        for event in backlog:
            yield event.text
            if event.final:
                return
        yield sse("end", job, last)  # a finished job's state, at once
        return
    position = after if after is not None else last
    subscription = hub.subscribe(job_id, position)
    try:
        if after is None:
            yield sse("job", job, last)
        pending = [await build_event(reader, job_id, raw) for raw in await reader.events_after(job_id, position)]
        while True:
            fresh = [event for event in pending if id_key(event.id) > id_key(position)]  # no repeats
            ended = next((i for i, event in enumerate(fresh) if event.final), None)
            if ended is not None:
                fresh = fresh[: ended + 1]
            if fresh:
                position = fresh[-1].id
                yield b"".join(event.text for event in fresh)  # one write for what came together
            if ended is not None:
                return
            try:
                async with asyncio.timeout(heartbeat):  # a timer, not a task per wait as wait_for makes
                    first = await subscription.queue.get()
            except TimeoutError:
                pending = []
                yield b": keep-alive\n\n"
                continue
            pending = [first]
            while not subscription.queue.empty():
                pending.append(subscription.queue.get_nowait())
            if any(event is OVERFLOW for event in pending):  # it fell behind: what it missed is in the stream
                raws = await reader.events_after(job_id, position)
                pending = [await build_event(reader, job_id, raw) for raw in raws]
    finally:
        hub.unsubscribe(subscription)


@router.get(
    "/{job_id}/losses",
    operation_id="get_loss_history",
    response_model=LossHistory,
    responses=problems(e404="no such job", e503=UNAVAILABLE),
)
async def get_loss_history(job_id: str, reader: ReaderDep) -> dict[str, list[float]]:
    """Every loss the job has reported (at each progress event: every `snapshot_every / 5`
    iterations, at most twice a second, and at each snapshot), for charts."""
    await load_record(job_id, reader)
    return await reader.losses(job_id)
