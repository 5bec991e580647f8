"""Every Redis key of the service and the job record: the one place api/ and worker/ share.

A job is a hash `nst:job:{id}` whose fields each hold one JSON value, so that the worker's
progress writes and the API's cancel touch different fields and never overwrite each other.
Status changes go through one Lua script, atomic in Redis: a job that was canceled while queued
cannot be started, and a finished job cannot be reopened.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

PREFIX = "nst"
QUEUE_KEY = f"{PREFIX}:queue"  # sorted set: queued job ids by submission order
JOBS_KEY = f"{PREFIX}:jobs"  # sorted set: every job id by submission order, for listing
SEQUENCE_KEY = f"{PREFIX}:sequence"  # counter giving each job its order
WORKERS_KEY = f"{PREFIX}:workers"  # sorted set: worker name -> last heartbeat (unix time)
RUNNING_KEY = f"{PREFIX}:running"  # set: ids of running jobs, each held by a lease

_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    """128 random bits: unguessable, and safe in a URL and a Redis key."""
    return secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    """Whether `value` could be one of our ids; anything else is answered 404 without Redis."""
    return _ID_PATTERN.fullmatch(value) is not None


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def content_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:content"


def style_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:job:{job_id}:style:{index}"


def snapshot_key(job_id: str, iteration: int) -> str:
    return f"{PREFIX}:job:{job_id}:snapshot:{iteration}"


def result_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:result"


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:cancel"


def lease_key(job_id: str) -> str:
    """Exists while a worker runs the job; it renews it. Gone: the worker died."""
    return f"{PREFIX}:job:{job_id}:lease"


def checkpoint_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:checkpoint"


def completions_key(job_id: str) -> str:
    """How many times the job was recorded as succeeded: exactly 1, or the service is wrong."""
    return f"{PREFIX}:job:{job_id}:completions"


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobRecord(BaseModel):
    """What Redis holds about a job (images apart)."""

    id: str
    status: JobStatus = "queued"
    created_at: str = Field(default_factory=utc_now)
    started_at: str | None = None
    finished_at: str | None = None
    params: dict[str, Any]
    style_count: int
    sequence: int = 0
    iteration: int = 0
    losses: dict[str, float] | None = None
    iterations_per_second: float | None = None
    eta_seconds: float | None = None
    snapshots: list[int] = Field(default_factory=list)
    error: dict[str, Any] | None = None
    weights: str | None = None
    attempts: int = 0
    worker: str | None = None
    run_token: str | None = None  # names the attempt that holds the job; stale runs see it change

    @property
    def total(self) -> int:
        return int(self.params["iterations"])

    def to_redis(self) -> dict[str, str]:
        return {name: json.dumps(value) for name, value in self.model_dump().items()}

    @classmethod
    def from_redis(cls, fields: dict[bytes, bytes]) -> JobRecord:
        return cls.model_validate({k.decode(): json.loads(v) for k, v in fields.items()})


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    return {name: json.dumps(value) for name, value in fields.items()}


# KEYS[1] job hash; ARGV[1] JSON list of statuses allowed now; ARGV[2] JSON object of fields
# (each value already JSON); ARGV[3] the run_token the job must hold (JSON), or "" for any.
# Returns {1, old status} when applied, {0, old status} when not, {0, false} for no job.
_TRANSITION = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, false} end
local status = cjson.decode(current)
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[3] then return {0, status} end
for _, allowed in ipairs(cjson.decode(ARGV[1])) do
  if allowed == status then
    for name, value in pairs(cjson.decode(ARGV[2])) do
      redis.call('HSET', KEYS[1], name, value)
    end
    return {1, status}
  end
end
return {0, status}
"""

# Claim a queued job for one run. KEYS: job hash, lease, running set, queue. ARGV: job id, fields
# (JSON object of JSON values, run_token among them), the token, lease seconds.
_CLAIM = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, false} end
local status = cjson.decode(current)
if status ~= 'queued' then return {0, status} end
for name, value in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], name, value) end
redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[4]))
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return {1, status}
"""

# Renew a lease only for the run that holds the job. A lease that lapsed while Redis was away
# is taken back if the job still runs under this token (before any reaper requeues it).
# KEYS: lease, job hash. ARGV: token, seconds.
_RENEW = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or (not held and redis.call('HGET', KEYS[2], 'run_token') == ARGV[1]
    and redis.call('HGET', KEYS[2], 'status') == '"running"') then
  return redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
end
return false
"""

# A running job whose lease has gone: its worker died. Queue it again at its old place, or fail
# it after max attempts. KEYS: job hash, lease, running set, queue. ARGV: job id, max attempts,
# the failed fields (JSON object of JSON values). Returns 'alive', 'gone', 'requeued', 'failed'.
_REAP = """
local current = redis.call('HGET', KEYS[1], 'status')
if not current or cjson.decode(current) ~= 'running' then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 'gone'
end
if redis.call('EXISTS', KEYS[2]) == 1 then return 'alive' end
redis.call('SREM', KEYS[3], ARGV[1])
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts'))
if attempts >= tonumber(ARGV[2]) then
  for name, value in pairs(cjson.decode(ARGV[3])) do redis.call('HSET', KEYS[1], name, value) end
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', cjson.encode('queued'), 'run_token', 'null')
redis.call('ZADD', KEYS[4], tonumber(redis.call('HGET', KEYS[1], 'sequence')), ARGV[1])
return 'requeued'
"""


class JobStore:
    """Reads and writes of job state; the only code that knows the key layout."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition = client.register_script(_TRANSITION)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._reap = client.register_script(_REAP)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> JobStore:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=10)
        return cls(client, ttl_seconds)

    # -- submission ------------------------------------------------------------------------
    def create(self, record: JobRecord, content: bytes, styles: list[bytes]) -> JobRecord:
        """Store a new queued job and its inputs in one transaction."""
        sequence = int(self.redis.incr(SEQUENCE_KEY))
        record = record.model_copy(update={"sequence": sequence, "style_count": len(styles)})
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(job_key(record.id), mapping=record.to_redis())
        pipe.expire(job_key(record.id), self.ttl)
        pipe.set(content_key(record.id), content, ex=self.ttl)
        for index, style in enumerate(styles):
            pipe.set(style_key(record.id, index), style, ex=self.ttl)
        pipe.zadd(QUEUE_KEY, {record.id: sequence})
        pipe.zadd(JOBS_KEY, {record.id: sequence})
        pipe.execute()
        return record

    def queued_count(self) -> int:
        return int(self.redis.zcard(QUEUE_KEY))

    def forget(self, job_id: str, style_count: int) -> None:
        """Remove a job that could not be queued (the broker refused it)."""
        keys = [job_key(job_id), content_key(job_id), *(style_key(job_id, i) for i in range(style_count))]
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.zrem(QUEUE_KEY, job_id)
        pipe.zrem(JOBS_KEY, job_id)
        pipe.execute()

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        fields = self.redis.hgetall(job_key(job_id))
        return JobRecord.from_redis(fields) if fields else None

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start; None when the job is not waiting."""
        rank = self.redis.zrank(QUEUE_KEY, job_id)
        return None if rank is None else int(rank) + 1

    def list_jobs(self, limit: int, before: int | None) -> tuple[list[JobRecord], int | None]:
        """Newest first, below sequence number `before`; returns the jobs and the next cursor."""
        upper = f"({before}" if before is not None else "+inf"
        records: list[JobRecord] = []
        while len(records) < limit:
            rows = self.redis.zrevrangebyscore(
                JOBS_KEY, upper, "-inf", start=0, num=limit - len(records), withscores=True
            )
            if not rows:
                return records, None
            for raw_id, score in rows:
                upper = f"({int(score)}"
                record = self.get(raw_id.decode())
                if record is None:  # expired: drop it from the listing for good
                    self.redis.zrem(JOBS_KEY, raw_id)
                    continue
                records.append(record)
        more = self.redis.zrevrangebyscore(JOBS_KEY, upper, "-inf", start=0, num=1)
        return records, (records[-1].sequence if more else None)

    def inputs(self, job_id: str, style_count: int) -> tuple[bytes, list[bytes]] | None:
        values = self.redis.mget([content_key(job_id), *(style_key(job_id, i) for i in range(style_count))])
        if any(v is None for v in values):
            return None
        return values[0], list(values[1:])

    def snapshot(self, job_id: str, iteration: int) -> bytes | None:
        return self.redis.get(snapshot_key(job_id, iteration))

    def result(self, job_id: str) -> bytes | None:
        return self.redis.get(result_key(job_id))

    # -- changes ---------------------------------------------------------------------------
    def transition(
        self, job_id: str, allowed: list[str], fields: dict[str, Any], run_token: str | None = None
    ) -> tuple[bool, str | None]:
        """Apply `fields` only if the job's status is in `allowed` (and, given `run_token`, the
        job is still held by that run); returns (applied, old status)."""
        token = json.dumps(run_token) if run_token is not None else ""
        applied, old = self._transition(
            keys=[job_key(job_id)], args=[json.dumps(allowed), json.dumps(encode_fields(fields)), token]
        )
        return bool(applied), (old.decode() if old else None)

    def claim(self, job_id: str, fields: dict[str, Any], run_token: str, lease_seconds: int) -> tuple[bool, str | None]:
        """queued -> running for one run, with its lease, atomically; (claimed, old status)."""
        keys = [job_key(job_id), lease_key(job_id), RUNNING_KEY, QUEUE_KEY]
        args = [
            job_id,
            json.dumps(encode_fields({**fields, "run_token": run_token})),
            json.dumps(run_token),
            lease_seconds,
        ]
        applied, old = self._claim(keys=keys, args=args)
        return bool(applied), (old.decode() if old else None)

    def renew_lease(self, job_id: str, run_token: str, lease_seconds: int) -> bool:
        keys = [lease_key(job_id), job_key(job_id)]
        return bool(self._renew(keys=keys, args=[json.dumps(run_token), lease_seconds]))

    def reap(self, max_attempts: int) -> list[tuple[str, str]]:
        """Requeue (or fail, past max attempts) running jobs whose worker died; returns what it did."""
        failed = encode_fields(
            {
                "status": "failed",
                "finished_at": utc_now(),
                "run_token": None,
                "error": {
                    "type": "/problems/worker-lost",
                    "title": "Worker lost",
                    "status": 500,
                    "detail": f"the worker running this job stopped {max_attempts} times; giving up",
                },
            }
        )
        outcomes = []
        for raw in self.redis.smembers(RUNNING_KEY):
            job_id = raw.decode()
            keys = [job_key(job_id), lease_key(job_id), RUNNING_KEY, QUEUE_KEY]
            outcome = self._reap(keys=keys, args=[job_id, max_attempts, json.dumps(failed)]).decode()
            if outcome in ("requeued", "failed"):
                outcomes.append((job_id, outcome))
        return outcomes

    def run_state(self, job_id: str) -> tuple[str | None, str | None, bool]:
        """(status, run_token, cancel requested) in one round trip, for a running job's checks."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(job_key(job_id), ["status", "run_token"])
        pipe.exists(cancel_key(job_id))
        (status, token), canceled = pipe.execute()
        return (
            json.loads(status) if status else None,
            json.loads(token) if token else None,
            bool(canceled),
        )

    def save_checkpoint(self, job_id: str, data: bytes) -> None:
        self.redis.set(checkpoint_key(job_id), data, ex=self.ttl)

    def checkpoint(self, job_id: str) -> bytes | None:
        return self.redis.get(checkpoint_key(job_id))

    def completions(self, job_id: str) -> int:
        return int(self.redis.get(completions_key(job_id)) or 0)

    def dequeue(self, job_id: str) -> None:
        self.redis.zrem(QUEUE_KEY, job_id)

    def update(self, job_id: str, fields: dict[str, Any]) -> None:
        self.redis.hset(job_key(job_id), mapping=encode_fields(fields))

    def add_snapshot(self, job_id: str, iteration: int, jpeg: bytes, fields: dict[str, Any]) -> None:
        """The image and the progress that names it, in one transaction: a client that sees the
        snapshot listed can fetch it."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(snapshot_key(job_id, iteration), jpeg, ex=self.ttl)
        pipe.hset(job_key(job_id), mapping=encode_fields(fields))
        pipe.execute()

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        fields: dict[str, Any],
        run_token: str | None = None,
        result_png: bytes | None = None,
    ) -> bool:
        """Running -> a final status (with the result, if any), only for the run holding the job;
        False if it was no longer running or another run holds it now."""
        if result_png is not None:
            self.redis.set(result_key(job_id), result_png, ex=self.ttl)
        final = {**fields, "status": status, "finished_at": utc_now(), "run_token": None}
        applied, _ = self.transition(job_id, ["running"], final, run_token)
        if applied:
            pipe = self.redis.pipeline(transaction=True)
            pipe.srem(RUNNING_KEY, job_id)
            pipe.delete(lease_key(job_id), checkpoint_key(job_id))
            if status == "succeeded":
                pipe.incr(completions_key(job_id))
                pipe.expire(completions_key(job_id), self.ttl)
            pipe.execute()
            self.refresh_expiry(job_id)
        elif result_png is not None:
            self.redis.delete(result_key(job_id))
        return applied

    def refresh_expiry(self, job_id: str) -> None:
        """A finished job stays readable for the TTL from its end, not from its submission."""
        record = self.get(job_id)
        if record is None:
            return
        keys = [job_key(job_id), content_key(job_id), result_key(job_id)]
        keys += [style_key(job_id, i) for i in range(record.style_count)]
        keys += [snapshot_key(job_id, i) for i in record.snapshots]
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, self.ttl)
        pipe.delete(cancel_key(job_id))
        pipe.execute()

    def request_cancel(self, job_id: str) -> None:
        self.redis.set(cancel_key(job_id), b"1", ex=self.ttl)

    # -- workers ---------------------------------------------------------------------------
    def heartbeat(self, worker: str) -> None:
        self.redis.zadd(WORKERS_KEY, {worker: time.time()})

    def remove_worker(self, worker: str) -> None:
        self.redis.zrem(WORKERS_KEY, worker)

    def live_workers(self, max_age_seconds: float) -> list[str]:
        since = time.time() - max_age_seconds
        self.redis.zremrangebyscore(WORKERS_KEY, "-inf", f"({since - 3600}")  # long dead: forget them
        return [w.decode() for w in self.redis.zrangebyscore(WORKERS_KEY, since, "+inf")]
