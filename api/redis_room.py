"""Whether Redis has room for another job: refused (503) past NST_REDIS_HIGH_WATER of its maxmemory.

Redis runs with `noeviction`: once full it refuses writes, and every running job's progress and
every submission fail together. Refusing new jobs a margin before that keeps the jobs already
accepted running while finished ones expire or are deleted. `INFO memory` is read at most once a
ROOM_CACHE_SECONDS per client, not once per submission of a burst.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass

import redis

from api.problems import Problem

ROOM_CACHE_SECONDS = 1.0


@dataclass(frozen=True)
class MemoryReading:
    used: int  # bytes Redis holds (used_memory)
    limit: int  # its maxmemory; 0 is none
    taken: float  # time.monotonic() of the reading


_readings: weakref.WeakKeyDictionary[redis.Redis, MemoryReading] = weakref.WeakKeyDictionary()
_lock = threading.Lock()  # submissions are checked in the thread pool


def memory_reading(client: redis.Redis) -> MemoryReading:
    """Redis's memory now, or as read less than ROOM_CACHE_SECONDS ago on this client."""
    now = time.monotonic()
    with _lock:
        reading = _readings.get(client)
    if reading is not None and now - reading.taken < ROOM_CACHE_SECONDS:
        return reading
    info = client.info("memory")
    reading = MemoryReading(int(info["used_memory"]), int(info.get("maxmemory", 0)), now)
    with _lock:
        _readings[client] = reading
    return reading


def check_redis_room(client: redis.Redis, high_water: float) -> None:
    """Problem service-full (503, Retry-After) when Redis holds more than `high_water` of its maxmemory."""
    reading = memory_reading(client)
    if reading.limit > 0 and reading.used > high_water * reading.limit:
        raise Problem(
            "service-full",
            f"Redis holds {reading.used} bytes, more than {high_water:.0%} (NST_REDIS_HIGH_WATER) of its "
            f"maxmemory of {reading.limit} bytes: no new job is stored until finished jobs expire or are deleted; "
            "try again later",
            headers={"Retry-After": "60"},
            used_memory=reading.used,
            maxmemory=reading.limit,
        )
