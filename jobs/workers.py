"""Which workers are alive, and what each can run: the one liveness rule and its queries.

A worker (jobs or webhooks) names itself by host and pid. A job worker writes a heartbeat every
NST_WORKER_HEARTBEAT_SECONDS with a report (device, precision, memory budget); it is live while
its last heartbeat is at most LIVE_HEARTBEATS heartbeats old. Admission, `/readyz` and
`/metrics` all ask through `live_range`, so they agree on who is live.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, cast

import redis

from jobs.keys import WORKER_INFO_KEY, WORKERS_KEY, ready_key

LIVE_HEARTBEATS = 3  # missed heartbeats before a worker counts as gone
FORGET_SECONDS = 3600  # a worker silent this long past that leaves the live set for good


def worker_name(host: str, pid: int) -> str:
    """How a job worker names itself: in the live set, its heartbeat, the jobs it runs."""
    return f"{host}:{pid}"


def webhook_worker_name(host: str, pid: int) -> str:
    return f"webhooks:{host}:{pid}"


def live_range(heartbeat_seconds: float, now: float | None = None) -> tuple[str, float, str]:
    """(key, min, max) for ZRANGEBYSCORE or ZCOUNT: the workers live now, sync or async."""
    since = (time.time() if now is None else now) - LIVE_HEARTBEATS * heartbeat_seconds
    return WORKERS_KEY, since, "+inf"


def parse_report(raw: bytes | None) -> dict[str, Any]:
    """A worker's report as it stored it; {} for none or one that makes no sense."""
    try:
        report = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return report if isinstance(report, dict) else {}


def live_reports(names: list[bytes], reports: Mapping[bytes, bytes | None]) -> dict[str, dict[str, Any]]:
    """Live worker -> its last report ({} if it reported nothing), from the set's and the hash's replies."""
    return {name.decode(): parse_report(reports.get(name)) for name in names}


class WorkerRegistry:
    """Heartbeats, readiness and the live set, synchronous: the workers, `nst up` and admission."""

    def __init__(self, client: redis.Redis, heartbeat_seconds: float) -> None:
        self.redis = client
        self.heartbeat_seconds = heartbeat_seconds

    def heartbeat(self, worker: str, info: dict[str, Any] | None = None) -> None:
        """The worker is alive, with what it can run (`info`: device, precision, memory budget)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zadd(WORKERS_KEY, {worker: time.time()})
        if info is not None:
            pipe.hset(WORKER_INFO_KEY, worker, json.dumps(info))
        pipe.execute()

    def remove(self, worker: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(WORKERS_KEY, worker)
        pipe.hdel(WORKER_INFO_KEY, worker)
        pipe.execute()

    def mark_ready(self, name: str, seconds: int = 3600) -> None:
        """The worker `name` consumes its queue now (Celery's worker_ready)."""
        self.redis.set(ready_key(name), "1", ex=seconds)

    def is_ready(self, name: str) -> bool:
        return bool(self.redis.exists(ready_key(name)))

    def live(self) -> dict[str, dict[str, Any]]:
        """Each live worker and its last report ({} if it reported nothing); long-dead ones are forgotten."""
        key, since, until = live_range(self.heartbeat_seconds)
        dead = self.redis.zrangebyscore(key, "-inf", f"({since - FORGET_SECONDS}")
        if dead:
            self.redis.zrem(key, *dead)
            self.redis.hdel(WORKER_INFO_KEY, *dead)
        names = cast(list[bytes], self.redis.zrangebyscore(key, since, until))
        if not names:
            return {}
        reports = cast(list[bytes | None], self.redis.hmget(WORKER_INFO_KEY, names))
        return live_reports(names, dict(zip(names, reports, strict=True)))
