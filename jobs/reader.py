"""The API's read path: async Redis (redis.asyncio) from the route to the socket, no thread hop.

Reads return the job as the JSON-ready dict clients see (`jobs.view.job_view`) and the raw
entries of its event stream; the key layout comes from `jobs/keys.py`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import redis
import redis.asyncio as aioredis

from jobs.fair_queue import QUEUE_POSITION
from jobs.keys import (
    JOBS_KEY,
    RUNNING_KEY,
    SERVED_KEY,
    WORKER_INFO_KEY,
    events_key,
    job_key,
    losses_key,
    lua_layout,
    owner_jobs_key,
    result_key,
    snapshot_key,
)
from jobs.record import decode_fields, is_job_id, parse_history
from jobs.view import job_view
from jobs.worker_reports import WorkerSpeed, speed_of
from jobs.workers import live_range, live_reports

# An event stream entry as Redis gives it: (id, {b"type": ..., b"data": ...}).
RawEvent = tuple[bytes, dict[bytes, bytes]]

READ_TIMEOUT_SECONDS = 10.0
# A queued job's ETA rests on the live workers' measured speeds, which change only when a worker
# comes or goes: read with a poll at most this often per process, never a round trip of their own.
SPEEDS_MAX_AGE_SECONDS = 2.0
P = ParamSpec("P")
R = TypeVar("R")


def bounded(
    method: Callable[Concatenate[JobReader, P], Awaitable[R]],
) -> Callable[Concatenate[JobReader, P], Awaitable[R]]:
    """One read: at most `max_connections` at once (so at most that many connections, also when a
    thousand event streams connect together), and one that Redis does not answer in time fails
    as a Redis error (503). A semaphore and asyncio.timeout cost next to nothing; redis-py's
    BlockingConnectionPool and socket_timeout (a task per send) cost more than the rest of a
    poll's answer. Bounded methods do not call each other (a nested permit could deadlock)."""

    @functools.wraps(method)
    async def read(self: JobReader, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS), self.permits:
                return await method(self, *args, **kwargs)
        except TimeoutError as exc:
            raise redis.TimeoutError("Redis did not answer in time") from exc

    # functools.wraps types its result as a wrapper of `method`: the same call, to a type checker.
    return cast("Callable[Concatenate[JobReader, P], Awaitable[R]]", read)


def owns(fields: dict[bytes, bytes], owner: str | None) -> bool:
    """Whether the job hash belongs to API key `owner` (None: keys are off, every job is visible).
    Compared as stored (JSON) to skip decoding: another key's job reads as no job at all."""
    return owner is None or fields.get(b"owner") == json.dumps(owner).encode()


class JobReader:
    """Async reads of jobs, their images, history and event streams."""

    def __init__(self, client: aioredis.Redis, max_connections: int = 64) -> None:
        self.redis = client
        self.permits = asyncio.Semaphore(max_connections)
        # A queued job's place, in fair order between tenants (jobs/fair_queue.py).
        self._ahead = QUEUE_POSITION.register_async(client)
        self._layout = lua_layout()
        self._speeds: tuple[WorkerSpeed, ...] = ()
        self._speeds_read_at = -math.inf  # time.monotonic() of the reading behind _speeds

    def _queue_ahead(self, job_id: str | bytes, pipe: Any = None) -> Awaitable[Any]:
        """How many jobs start before this one (None: it is not queued); in `pipe`, awaiting it
        only adds it there."""
        keys = {"running": RUNNING_KEY, "served": SERVED_KEY}
        return self._ahead(keys=keys, args={"job": job_id, "layout": self._layout}, client=pipe)

    @classmethod
    def from_url(cls, url: str, max_connections: int = 64) -> JobReader:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=10)
        return cls(client, max_connections)

    async def close(self) -> None:
        await self.redis.aclose()

    @bounded
    async def record(self, job_id: str, owner: str | None = None) -> dict[str, Any] | None:
        """The decoded job hash, or None; ids that cannot be ours never reach Redis."""
        return await self._record(job_id, owner)

    async def _record(self, job_id: str, owner: str | None) -> dict[str, Any] | None:
        if not is_job_id(job_id):
            return None
        fields = cast(dict[bytes, bytes], await self.redis.hgetall(job_key(job_id)))
        return decode_fields(fields) if fields and owns(fields, owner) else None

    @bounded
    async def job(
        self, job_id: str, owner: str | None = None, heartbeat_seconds: float | None = None
    ) -> dict[str, Any] | None:
        """The job as clients see it: one HGETALL, and a ZRANK only while it is queued. With
        `heartbeat_seconds`, a queued job gets an ETA from the live workers' measured speeds, read
        at most every SPEEDS_MAX_AGE_SECONDS, in the same round trip as its place."""
        record = await self._record(job_id, owner)
        if record is None:
            return None
        if record["status"] != "queued":
            return job_view(record, None)
        if heartbeat_seconds is None:
            return job_view(record, await self._queue_ahead(job_id))
        if time.monotonic() - self._speeds_read_at <= SPEEDS_MAX_AGE_SECONDS:
            return job_view(record, await self._queue_ahead(job_id), self._speeds)
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._queue_ahead(job_id, pipe)
            _queue_live_reports(pipe, heartbeat_seconds)
            rank, names, reports = await pipe.execute()
        return job_view(record, rank, self._remember_speeds(live_reports(names, reports)))

    def _remember_speeds(self, reports: dict[str, dict[str, Any]]) -> tuple[WorkerSpeed, ...]:
        """The measured speeds of the live workers that sent `reports`, kept for the next polls."""
        self._speeds = tuple(speed for speed in map(speed_of, reports.values()) if speed is not None)
        self._speeds_read_at = time.monotonic()
        return self._speeds

    @bounded
    async def exists(self, job_id: str) -> bool:
        return bool(await self.redis.exists(job_key(job_id)))

    @bounded
    async def job_with_position(
        self, job_id: str, owner: str | None = None
    ) -> tuple[dict[str, Any] | None, bytes | None, bytes | None]:
        """The job, and the ids of the first and last entries of its event stream, read in one
        transaction: the job is exactly the state those entries had made."""
        if not is_job_id(job_id):
            return None, None, None
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(job_key(job_id))
            await self._queue_ahead(job_id, pipe)  # the script's call only queues it in the pipeline
            pipe.xrange(events_key(job_id), count=1)
            pipe.xrevrange(events_key(job_id), count=1)
            fields, rank, first, last = await pipe.execute()
        if not fields or not owns(fields, owner):
            return None, None, None
        return job_view(decode_fields(fields), rank), (first[0][0] if first else None), (last[0][0] if last else None)

    @bounded
    async def events_after(self, job_id: str, after: bytes) -> list[RawEvent]:
        """Every entry of the job's stream after `after` (exclusive)."""
        return cast(list[RawEvent], await self.redis.xrange(events_key(job_id), min=b"(" + after))

    @bounded
    async def losses(self, job_id: str) -> dict[str, list[float]]:
        raw = cast(bytes | None, await self.redis.get(losses_key(job_id)))
        return parse_history(raw.decode() if raw else "")

    @bounded
    async def snapshot(self, job_id: str, iteration: int) -> bytes | None:
        return cast(bytes | None, await self.redis.get(snapshot_key(job_id, iteration)))

    @bounded
    async def result(self, job_id: str) -> bytes | None:
        return cast(bytes | None, await self.redis.get(result_key(job_id)))

    @bounded
    async def list_jobs(
        self, limit: int, before: int | None, owner: str | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Newest first, below sequence number `before`; returns the jobs and the next cursor.
        With `owner`, that API key's jobs only (from its own index)."""
        index = JOBS_KEY if owner is None else owner_jobs_key(owner)
        upper = f"({before}" if before is not None else "+inf"
        jobs: list[dict[str, Any]] = []
        last_sequence = 0
        while len(jobs) < limit:
            rows = cast(
                list[tuple[bytes, float]],
                await self.redis.zrevrangebyscore(
                    index, upper, "-inf", start=0, num=limit - len(jobs), withscores=True
                ),
            )
            if not rows:
                return jobs, None
            upper = f"({int(rows[-1][1])}"
            async with self.redis.pipeline(transaction=False) as pipe:
                for raw_id, _ in rows:
                    pipe.hgetall(job_key(raw_id.decode()))
                    await self._queue_ahead(raw_id, pipe)
                answers = await pipe.execute()
            for (raw_id, _), fields, rank in zip(rows, answers[::2], answers[1::2], strict=True):
                if not fields:  # expired: drop it from the listing for good
                    await self.redis.zrem(index, raw_id)
                    continue
                record = decode_fields(fields)
                last_sequence = record["sequence"]
                jobs.append(job_view(record, rank))
        more = await self.redis.zrevrangebyscore(index, upper, "-inf", start=0, num=1)
        return jobs, (last_sequence if more else None)

    @bounded
    async def worker_reports(self, heartbeat_seconds: float) -> dict[str, dict[str, Any]]:
        """Each live worker (jobs/workers.py's rule) and its last report ({} if none), read now;
        the queued jobs' ETAs take their speeds from this reading too."""
        async with self.redis.pipeline(transaction=True) as pipe:
            _queue_live_reports(pipe, heartbeat_seconds)
            names, reports = await pipe.execute()
        live = live_reports(names, reports)
        self._remember_speeds(live)
        return live

    @bounded
    async def ping(self) -> None:
        await self.redis.ping()


def _queue_live_reports(pipe: Any, heartbeat_seconds: float) -> None:
    """The live workers' names and every worker's report, queued in `pipe` (two replies; the
    report hash is small: a worker long gone is forgotten, jobs/workers.py)."""
    pipe.zrangebyscore(*live_range(heartbeat_seconds))
    pipe.hgetall(WORKER_INFO_KEY)


async def read_new_events(
    client: aioredis.Redis, positions: Mapping[str, bytes], count: int, block_ms: int
) -> list[tuple[str, list[RawEvent]]]:
    """The entries of several jobs' event streams after the positions given (job id -> the last
    entry id seen), waiting up to `block_ms` for one: [(job id, entries)], one XREAD for all."""
    watched = {events_key(job_id): job_id for job_id in positions}
    streams: dict[Any, Any] = {key: positions[job_id] for key, job_id in watched.items()}
    replies = cast(list[tuple[bytes, list[RawEvent]]] | None, await client.xread(streams, count=count, block=block_ms))
    return [(watched[key.decode()], entries) for key, entries in replies or []]
