"""`Prefer: wait=N` on `POST /jobs` (RFC 7240): the submission answers with the finished job when
it ends within N seconds, and as it always does (202) when not.

The wait costs nothing while it lasts: the request subscribes to the job's events through the
process's event hub (api/event_hub.py, the one XREAD that feeds every event stream) and sleeps on
its queue; no Redis poll, no thread. A client that leaves is noticed (its connection's disconnect
message) and the subscription goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis
from starlette.types import Receive

from api.event_hub import OVERFLOW, ZERO_ID, EventHub, Subscription
from jobs.reader import JobReader
from jobs.record import TERMINAL

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60
_MAX_DIGITS = 6  # more digits than this is more than MAX_WAIT_SECONDS anyway: not worth int()


def requested_wait(headers: list[str]) -> int | None:
    """The seconds the request's Prefer headers ask to wait, at most MAX_WAIT_SECONDS; None when
    they ask for none, or the first `wait` is not a number of seconds (RFC 7240: a preference
    that cannot be understood is ignored, and only the first of a repeated one counts)."""
    for header in headers:
        for preference in header.split(","):
            name, _, value = preference.partition(";")[0].partition("=")
            if name.strip(" \t").lower() != "wait":
                continue
            value = value.strip(" \t")
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # a quoted-string is a word too
            if not (value.isascii() and value.isdigit()):
                return None
            seconds = int(value) if len(value) <= _MAX_DIGITS else MAX_WAIT_SECONDS
            return min(seconds, MAX_WAIT_SECONDS) or None  # wait=0: answer at once, as without it
    return None


async def wait_for_end(
    hub: EventHub, reader: JobReader, job_id: str, owner: str | None, seconds: float, receive: Receive
) -> dict[str, Any] | None:
    """The job as GET /jobs/{id} shows it once it has succeeded, failed or been canceled, if that
    happens within `seconds`; None if it has not (or it has gone, or Redis did not answer, or the
    client left: each answers as without the preference). `receive`: the request's, whose body
    has been read, so that its next message is the client's disconnect."""
    # Subscribed before the status is read: an end written after the read reaches the queue.
    subscription = hub.subscribe(job_id, ZERO_ID)
    ended = asyncio.ensure_future(_until_final(subscription, reader, job_id, owner))
    left = asyncio.ensure_future(_client_left(receive))
    try:
        done, _ = await asyncio.wait((ended, left), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if left in done:
            log.info("job %s: the client left while waiting for it", job_id)
        if ended not in done:
            return None
        return ended.result()
    except redis.RedisError as exc:  # the job is queued all the same: say so (202) rather than fail
        log.warning("job %s: Redis failed while a submission waited for it (%s); answered 202", job_id, exc)
        return None
    finally:
        for task in (ended, left):
            task.cancel()
        for task in (ended, left):
            with contextlib.suppress(asyncio.CancelledError, redis.RedisError):
                await task
        hub.unsubscribe(subscription)


async def _until_final(
    subscription: Subscription, reader: JobReader, job_id: str, owner: str | None
) -> dict[str, Any] | None:
    """The job once it is final; None if it is gone. Reads the job at the start, at its end event,
    and when the queue overflowed (events were dropped): never on progress."""
    while True:
        job = await reader.job(job_id, owner)
        if job is None or job["status"] in TERMINAL:
            return job
        while True:
            event = await subscription.queue.get()
            if event.final or event is OVERFLOW:
                break


async def _client_left(receive: Receive) -> None:
    """Returns when the client disconnects. The body has been read whole, so the server's next
    message is the disconnect; a server that answered otherwise is not watched (no busy loop)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body", False):
            await asyncio.Event().wait()  # never set: only the end of the wait stops this
