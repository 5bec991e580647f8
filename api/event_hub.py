"""Job events for Server-Sent Events: one reader of the Redis streams per API process, fanned out.

A blocking XREAD per client would hold one Redis connection per open stream. Here
one task per process reads every watched job's stream with a single XREAD and hands each entry,
formatted once, to an in-memory queue per client. A client that falls behind (its queue full) is
told so and reads what it missed from the stream itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field

import orjson
import redis
import redis.asyncio as aioredis

from jobs.reader import JobReader, RawEvent, read_new_events
from jobs.record import TERMINAL, decode_value
from jobs.view import event_view

log = logging.getLogger(__name__)

ZERO_ID = b"0-0"
READ_COUNT = 200  # entries per stream and XREAD: under a subscriber's queue, so one batch fits
_EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


UINT64 = 2**64


def parse_event_id(value: str | None, last: bytes | None) -> bytes | None:
    """A Last-Event-ID we could have sent for a stream whose newest entry is `last`, as the id it
    names; anything else (garbled, out of Redis' range, newer than the stream: another job's id)
    is None, and such a client gets the whole job instead."""
    if value is None or last is None or not _EVENT_ID.fullmatch(value.strip()):
        return None
    event_id = value.strip().encode()
    if any(part >= UINT64 for part in id_key(event_id)) or id_key(event_id) > id_key(last):
        return None
    return event_id


def id_key(event_id: bytes) -> tuple[int, int]:
    """Stream ids ("ms-seq") in their order."""
    ms, _, seq = event_id.partition(b"-")
    return int(ms), int(seq or 0)


def sse(kind: str, data: object, event_id: bytes) -> bytes:
    """One Server-Sent Event, encoded once for every client (the JSON has no newlines: one data line)."""
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (event_id, kind.encode(), orjson.dumps(data))


@dataclass(frozen=True)
class Event:
    """A stream entry ready to send. `final` marks the job's end: its text is the `end` event, or
    nothing when the job is gone (the stream closes; a reconnect gets 404)."""

    id: bytes
    text: bytes
    final: bool = False


async def build_events(reader: JobReader, job_id: str, raws: list[RawEvent]) -> list[Event]:
    """The events clients get for stream entries; a final status becomes `end` with the whole job.
    An entry that cannot be read is logged and left out; a Redis error is raised (try again)."""
    events = []
    for entry_id, fields in raws:
        kind = fields.get(b"type", b"").decode(errors="replace")
        try:
            data = decode_value(fields.get(b"data", b"{}"))
        except ValueError:
            log.warning("job %s: event %s is not JSON; left out", job_id, entry_id.decode())
            continue
        if kind == "status" and data.get("status") in TERMINAL:
            job = await reader.job(job_id)
            events.append(Event(entry_id, sse("end", job, entry_id) if job is not None else b"", final=True))
        else:
            events.append(Event(entry_id, sse(kind, event_view(job_id, kind, data), entry_id)))
    return events


OVERFLOW = Event(ZERO_ID, b"")  # put in a queue that filled up: read the stream again


@dataclass(eq=False)
class Subscription:
    job_id: str
    queue: asyncio.Queue[Event]


@dataclass
class _Feed:
    last_id: bytes
    subscribers: set[Subscription] = field(default_factory=set)


class EventHub:
    """Reads the streams of the jobs someone watches, in one task, and feeds every subscriber."""

    def __init__(self, url: str, reader: JobReader, block_ms: int = 500, queue_size: int = 512) -> None:
        # Its own connection: it spends its life blocked in XREAD.
        self.redis = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=block_ms / 1000 + 10)
        self.reader = reader
        self.block_ms = block_ms
        self.queue_size = queue_size
        self.feeds: dict[str, _Feed] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="nst-event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    @property
    def subscriber_count(self) -> int:
        return sum(len(feed.subscribers) for feed in self.feeds.values())

    def subscribe(self, job_id: str, position: bytes) -> Subscription:
        """Entries after `position` (at least) will reach the subscription's queue; the caller
        reads the backlog itself and drops what it has already sent."""
        subscription = Subscription(job_id, asyncio.Queue(self.queue_size))
        feed = self.feeds.setdefault(job_id, _Feed(position))
        feed.subscribers.add(subscription)
        self._wake.set()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        feed = self.feeds.get(subscription.job_id)
        if feed is None:
            return
        feed.subscribers.discard(subscription)
        if not feed.subscribers:
            del self.feeds[subscription.job_id]

    async def _run(self) -> None:
        while True:
            if not self.feeds:
                self._wake.clear()
                await self._wake.wait()
                continue
            positions = {job_id: feed.last_id for job_id, feed in self.feeds.items()}
            try:
                replies = await read_new_events(self.redis, positions, READ_COUNT, self.block_ms)
            except redis.RedisError as exc:  # Redis restarting: clients get keep-alives meanwhile
                log.warning("event hub: Redis unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            # Each job on its own: one that fails does not hold back the others.
            for job_id, entries in replies:
                try:
                    await self._dispatch(job_id, entries)
                except redis.RedisError as exc:  # its position stays: read again next round
                    log.warning("event hub: job %s: Redis unavailable (%s); retrying", job_id, exc)
                except Exception:  # a bug: skip these entries rather than stall this job's streams
                    log.exception("event hub: job %s: could not dispatch events; skipped", job_id)
                    feed = self.feeds.get(job_id)
                    if feed is not None:
                        feed.last_id = entries[-1][0]

    async def _dispatch(self, job_id: str, entries: list[RawEvent]) -> None:
        feed = self.feeds.get(job_id)
        if feed is None or not entries:
            return
        events = await build_events(self.reader, job_id, entries)
        feed.last_id = entries[-1][0]  # only once built: a failed build reads them again
        for subscription in list(feed.subscribers):
            for event in events:
                try:
                    subscription.queue.put_nowait(event)
                except asyncio.QueueFull:
                    _drain(subscription.queue)
                    subscription.queue.put_nowait(OVERFLOW)
                    break


def _drain(queue: asyncio.Queue[Event]) -> None:
    while not queue.empty():
        queue.get_nowait()
