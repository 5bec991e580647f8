"""How a job's writes treat a Redis that does not answer (a restart): progress is skipped,
the writes that decide a job's outcome wait for it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

# Named as before these helpers left worker/runner.py, so log records (and JSON logs' "logger") are unchanged.
log = logging.getLogger("worker.runner")

FINAL_WRITE_SECONDS = 120  # how long the final write waits for Redis to come back
T = TypeVar("T")


def best_effort(what: str, action: Callable[[], T]) -> T | None:
    """Progress writes must not kill a job while Redis restarts: log and go on."""
    try:
        return action()
    except redis.RedisError as exc:
        log.warning("%s skipped, Redis unavailable: %s", what, exc)
        return None


def until_redis_answers(what: str, action: Callable[[], T]) -> T:
    """The final writes wait for Redis (a restart) rather than lose a finished job."""
    deadline = time.monotonic() + FINAL_WRITE_SECONDS
    delay = 0.2
    while True:
        try:
            return action()
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("%s: Redis unavailable (%s); retrying", what, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
