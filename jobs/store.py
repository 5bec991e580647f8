"""Writes of job state (and the worker's reads), synchronous: the worker and the API's submit and cancel.

The key layout and the job record are in `jobs/keys.py`. Status changes go through Lua scripts,
atomic in Redis: a job that was canceled while queued cannot be started, and a finished job
cannot be reopened. Every change a watcher cares about (a status, progress, a snapshot) adds an
entry to the job's event stream in the same transaction, so a client that sees an event can read
what it announces.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from jobs import telemetry
from jobs.fair_queue import NEXT_JOB_LUA, POSITION, TENANCY_LUA
from jobs.keys import (
    EVENTS_MAXLEN,
    JOBS_KEY,
    QUEUE_KEY,
    RUNNING_KEY,
    SEQUENCE_KEY,
    SERVE_COUNTER_KEY,
    SERVED_KEY,
    TENANTS_KEY,
    cancel_key,
    checkpoint_key,
    completions_key,
    content_key,
    events_key,
    job_key,
    lease_key,
    losses_key,
    lua_layout,
    owner_jobs_key,
    result_key,
    snapshot_key,
    style_key,
    tenant_queue_key,
)
from jobs.problems import problem_body
from jobs.record import TERMINAL, EventKind, JobRecord, JobStatus, encode_fields, utc_now
from jobs.tenancy import Limits, TenantLimits, tenant_of
from jobs.workers import WorkerRegistry

# Prepended to every script that reports a change: one stream entry, and the stream's expiry.
_EMIT = """
local function emit(stream, kind, data, maxlen, ttl)
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'type', kind, 'data', data)
  redis.call('EXPIRE', stream, tonumber(ttl))
end
"""
# Every script below also knows tenants, queues and held bytes (fair_queue.TENANCY_LUA); its last
# argument is the key layout (keys.lua_layout()).
_PRELUDE = _EMIT + TENANCY_LUA

# KEYS: job hash, event stream. ARGV[1] JSON list of statuses allowed now; ARGV[2] JSON object of
# fields (each value already JSON); ARGV[3] the run_token the job must hold (JSON), or "" for any;
# ARGV[4] the status event's data, or "" for none; ARGV[5] stream length; ARGV[6] its TTL;
# ARGV[7] a JSON list of Redis commands (counters) to run only if the change applies, or "";
# ARGV[8] when the change ends the job, its id: its inputs are deleted and its held bytes become
# its outputs' for the TTL (TENANCY_LUA's `ended`), or ""; ARGV[9] the result image, stored at
# KEYS[3] only if the change applies (a run that lost the job cannot touch the result), or "".
# Returns {1, old status} when applied, {0, old status} when not, {0, false} for no job.
_TRANSITION = (
    _PRELUDE
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {0, false} end
local status = cjson.decode(current)
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[3] then return {0, status} end
for _, allowed in ipairs(cjson.decode(ARGV[1])) do
  if allowed == status then
    for name, value in pairs(cjson.decode(ARGV[2])) do
      redis.call('HSET', KEYS[1], name, value)
    end
    if ARGV[4] ~= '' then emit(KEYS[2], 'status', ARGV[4], ARGV[5], ARGV[6]) end
    if ARGV[7] ~= '' then
      for _, command in ipairs(cjson.decode(ARGV[7])) do redis.call(unpack(command)) end
    end
    if ARGV[9] ~= '' then redis.call('SET', KEYS[3], ARGV[9], 'EX', tonumber(ARGV[6])) end
    if ARGV[8] ~= '' then ended(ARGV[8], #ARGV[9], tonumber(ARGV[6])) end
    return {1, status}
  end
end
return {0, status}
"""
)

# Claim a queued job for one run: the job ARGV[1] names, or with ARGV[1] "" the next one in fair
# order (jobs/fair_queue.py). KEYS: queue, running set, served hash, serve counter. ARGV: job id
# or "", fields (JSON object of JSON values, run_token among them; `attempts` counts up by itself
# unless given), the token (JSON), lease seconds, now (JSON, for a first start), stream length,
# its TTL, layout. Returns {job id, attempts, created_at (JSON), 1} when claimed (0 last: this
# run's claim had been made already, its reply lost); {false, status} when the named job is not
# queued; {false, false} when there is no such job, or nothing is queued.
_CLAIM = (
    _PRELUDE
    + NEXT_JOB_LUA
    + """
local claim = key('claim', cjson.decode(ARGV[3]))
local made = redis.call('GET', claim)
if made and (ARGV[1] == '' or ARGV[1] == made) then
  local hash = key('job', made)
  return {made, tonumber(redis.call('HGET', hash, 'attempts')), redis.call('HGET', hash, 'created_at'), 0}
end
local job = ARGV[1]
if job == '' then
  job = next_job(KEYS[2], KEYS[3])
  if not job then return {false, false} end
end
local hash = key('job', job)
local current = redis.call('HGET', hash, 'status')
if not current then return {false, false} end
if current ~= '"queued"' then return {false, cjson.decode(current)} end
local fields = cjson.decode(ARGV[2])
local attempts = tonumber(fields.attempts or (tonumber(redis.call('HGET', hash, 'attempts') or '0') + 1))
for name, value in pairs(fields) do redis.call('HSET', hash, name, value) end
redis.call('HSET', hash, 'attempts', attempts)
if redis.call('HGET', hash, 'started_at') == 'null' then redis.call('HSET', hash, 'started_at', ARGV[5]) end
redis.call('SET', key('lease', job), ARGV[3], 'EX', tonumber(ARGV[4]))
redis.call('SET', claim, job, 'EX', tonumber(ARGV[4]) * 10)
redis.call('SADD', KEYS[2], job)
redis.call('ZREM', KEYS[1], job)
local tenant = tenant_of(job)
dequeue(tenant, job)
redis.call('HSET', KEYS[3], tenant, redis.call('INCR', KEYS[4]))
emit(key('events', job), 'status', cjson.encode({status = 'running', attempt = attempts}), ARGV[6], ARGV[7])
return {job, attempts, redis.call('HGET', hash, 'created_at'), 1}
"""
)

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

# A running job whose lease has gone: its worker died. Queue it again at its old place (in its
# tenant's queue too), or fail it after max attempts. KEYS: job hash, lease, running set, queue,
# event stream, the final-status counters (jobs/telemetry.py). ARGV: job id, max attempts, the
# failed fields (JSON object of JSON values), the failed and the requeued events' data, stream
# length, its TTL, layout. Returns 'alive', 'gone', 'requeued', 'failed'.
_REAP = (
    _PRELUDE
    + """
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
  emit(KEYS[5], 'status', ARGV[4], ARGV[6], ARGV[7])
  redis.call('HINCRBY', KEYS[6], 'failed', 1)
  ended(ARGV[1], 0, tonumber(ARGV[7]))
  return 'failed'
end
redis.call('HSET', KEYS[1], 'status', cjson.encode('queued'), 'run_token', 'null')
local sequence = tonumber(redis.call('HGET', KEYS[1], 'sequence'))
redis.call('ZADD', KEYS[4], sequence, ARGV[1])
enqueue(tenant_of(ARGV[1]), ARGV[1], sequence)
emit(KEYS[5], 'status', ARGV[5], ARGV[6], ARGV[7])
return 'requeued'
"""
)

# Cancel a job in one step, whatever it is doing: a queued job is canceled, leaves the queues and
# its inputs go; a running one is asked to stop (once: a repeated cancel adds no event); a
# finished one is left alone. KEYS: job hash, queue, cancel flag, event stream, final-status
# counters. ARGV: job id, finished_at (JSON), the canceled and the cancel-requested events' data,
# stream length, TTL, layout. Returns {outcome, old status}: 'canceled',
# 'requested', 'unchanged', or {'missing', false}.
_CANCEL = (
    _PRELUDE
    + """
local current = redis.call('HGET', KEYS[1], 'status')
if not current then return {'missing', false} end
local status = cjson.decode(current)
if status == 'queued' then
  redis.call('HSET', KEYS[1], 'status', cjson.encode('canceled'), 'finished_at', ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[1])
  dequeue(tenant_of(ARGV[1]), ARGV[1])
  emit(KEYS[4], 'status', ARGV[3], ARGV[5], ARGV[6])
  redis.call('HINCRBY', KEYS[5], 'canceled', 1)
  ended(ARGV[1], 0, tonumber(ARGV[6]))
  return {'canceled', status}
end
if status == 'running' then
  if redis.call('HGET', KEYS[1], 'cancel_requested') ~= 'true' then
    redis.call('SET', KEYS[3], '1', 'EX', tonumber(ARGV[6]))
    redis.call('HSET', KEYS[1], 'cancel_requested', 'true')
    emit(KEYS[4], 'status', ARGV[4], ARGV[5], ARGV[6])
  end
  return {'requested', status}
end
return {'unchanged', status}
"""
)

# Jobs queued by a version without tenant queues join their tenant's queue at their place, so a
# worker of this version runs them. KEYS: queue. ARGV: layout. Returns how many joined.
_ADOPT = (
    _PRELUDE
    + """
local adopted = 0
local rows = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #rows, 2 do
  local job = rows[i]
  local tenant = tenant_of(job)
  if not redis.call('ZSCORE', key('tenant_queue', tenant), job) then
    enqueue(tenant, job, tonumber(rows[i + 1]))
    adopted = adopted + 1
  end
end
return adopted
"""
)

# Take a job out of the queues (the broker refused it). KEYS: queue. ARGV: job id, layout.
_DEQUEUE = (
    _PRELUDE
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
dequeue(tenant_of(ARGV[1]), ARGV[1])
"""
)

# A progress write, only by the run that holds the job: a run that lost it (its lease lapsed and
# the job was requeued or failed) writes nothing after the job's end. KEYS: job hash, event
# stream, loss history, snapshot image. ARGV: run token (JSON), fields (JSON object of JSON
# values), progress event data, history line or '', snapshot image or '', snapshot event data
# or '', stream length, TTL, job id, layout; KEYS[5] the snapshots counter. A snapshot's bytes
# count for its tenant. Returns 1 when written, 0 when the run no longer holds the job.
_PUBLISH = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'run_token') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'status') ~= '"running"' then
  return 0
end
if ARGV[5] ~= '' then
  local before = redis.call('STRLEN', KEYS[4])  -- a resumed run writes an iteration's snapshot again
  redis.call('SET', KEYS[4], ARGV[5], 'EX', tonumber(ARGV[8]))
  redis.call('INCR', KEYS[5])
  settle(ARGV[9], tenant_of(ARGV[9]), #ARGV[5] - before, nil)
end
for name, value in pairs(cjson.decode(ARGV[2])) do redis.call('HSET', KEYS[1], name, value) end
if ARGV[4] ~= '' then
  redis.call('APPEND', KEYS[3], ARGV[4])
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
end
emit(KEYS[2], 'progress', ARGV[3], ARGV[7], ARGV[8])
if ARGV[6] ~= '' then emit(KEYS[2], 'snapshot', ARGV[6], ARGV[7], ARGV[8]) end
return 1
"""
)


def status_event(status: str, **extra: Any) -> str:
    """The data of a status entry in a job's event stream."""
    return json.dumps({"status": status, **extra})


class JobStore:
    """Reads and writes of job state; the only code that knows the key layout."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition = client.register_script(_TRANSITION)
        self._claim = client.register_script(_CLAIM)
        self._renew = client.register_script(_RENEW)
        self._reap = client.register_script(_REAP)
        self._cancel = client.register_script(_CANCEL)
        self._publish = client.register_script(_PUBLISH)
        self._dequeue = client.register_script(_DEQUEUE)
        self._adopt = client.register_script(_ADOPT)
        self._position = client.register_script(POSITION)
        self.layout = lua_layout()

    def close(self) -> None:
        self.redis.close()

    def tenant_limits(self, limits: Limits) -> TenantLimits:
        """Per-tenant limits (jobs/tenancy.py), checked on this store's connection."""
        return TenantLimits(self.redis, self.ttl, limits)

    def worker_registry(self, heartbeat_seconds: float) -> WorkerRegistry:
        """Heartbeats and the live set (jobs/workers.py), on this store's connection."""
        return WorkerRegistry(self.redis, heartbeat_seconds)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> JobStore:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=10)
        return cls(client, ttl_seconds)

    # -- submission ------------------------------------------------------------------------
    def create(self, record: JobRecord, content: bytes, styles: list[bytes]) -> JobRecord:
        """Store a new queued job and its inputs in one transaction."""
        sequence = int(self.redis.incr(SEQUENCE_KEY))
        input_bytes = len(content) + sum(len(style) for style in styles)
        update = {"sequence": sequence, "style_count": len(styles), "input_bytes": input_bytes}
        record = record.model_copy(update=update)
        tenant = tenant_of(record.owner)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(job_key(record.id), mapping=record.to_redis())
        pipe.expire(job_key(record.id), self.ttl)
        pipe.set(content_key(record.id), content, ex=self.ttl)
        for index, style in enumerate(styles):
            pipe.set(style_key(record.id, index), style, ex=self.ttl)
        pipe.zadd(QUEUE_KEY, {record.id: sequence})
        pipe.zadd(tenant_queue_key(tenant), {record.id: sequence})
        pipe.zadd(TENANTS_KEY, {tenant: sequence}, lt=True)  # its score: its oldest queued job
        pipe.zadd(JOBS_KEY, {record.id: sequence})
        if record.owner is not None:  # the API key's own listing (the global one stays whole)
            pipe.zadd(owner_jobs_key(record.owner), {record.id: sequence})
        self._emit(pipe, record.id, "status", status_event("queued"))
        pipe.execute()
        return record

    def adopt_queued(self) -> int:
        """Put jobs that an earlier version queued (without tenant queues) into their tenant's
        queue; a worker does it as it starts. Returns how many there were."""
        return int(self._adopt(keys=[QUEUE_KEY], args=[self.layout]))

    def queued_count(self) -> int:
        return int(self.redis.zcard(QUEUE_KEY))

    def forget(self, job_id: str, style_count: int, owner: str | None = None) -> None:
        """Remove a job that could not be queued (the broker refused it)."""
        self._dequeue(keys=[QUEUE_KEY], args=[job_id, self.layout])
        keys = [job_key(job_id), content_key(job_id), *(style_key(job_id, i) for i in range(style_count))]
        keys.append(events_key(job_id))
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(*keys)
        pipe.zrem(JOBS_KEY, job_id)
        if owner is not None:
            pipe.zrem(owner_jobs_key(owner), job_id)
        pipe.execute()

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        fields = self.redis.hgetall(job_key(job_id))
        return JobRecord.from_redis(fields) if fields else None

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start (in fair order between tenants); None when it is not waiting."""
        ahead = self._position(keys=[RUNNING_KEY, SERVED_KEY], args=[job_id, self.layout])
        return None if ahead is None else int(ahead) + 1

    def inputs(self, job_id: str, style_count: int) -> tuple[bytes, list[bytes]] | None:
        values = self.redis.mget([content_key(job_id), *(style_key(job_id, i) for i in range(style_count))])
        if any(v is None for v in values):
            return None
        return values[0], list(values[1:])

    def transition(
        self,
        job_id: str,
        allowed: list[str],
        fields: dict[str, Any],
        run_token: str | None = None,
        also: telemetry.Commands | None = None,
        result: bytes | None = None,
    ) -> tuple[bool, str | None]:
        """Apply `fields` only if the job's status is in `allowed` (and, given `run_token`, the
        job is still held by that run); returns (applied, old status). A new status is reported
        in the job's event stream; `also`'s commands run in the same script, only if it applies.
        A final status deletes the job's inputs there and then (nothing can run it again), stores
        `result`, and what the job holds for its tenant becomes its snapshots and its result."""
        token = json.dumps(run_token) if run_token is not None else ""
        event = status_event(fields["status"]) if "status" in fields else ""
        extra = json.dumps(also.commands) if also is not None and also.commands else ""
        ending = job_id if fields.get("status") in TERMINAL else ""
        args = [json.dumps(allowed), json.dumps(encode_fields(fields)), token, event, EVENTS_MAXLEN, self.ttl, extra]
        keys = [job_key(job_id), events_key(job_id), result_key(job_id)]
        applied, old = self._transition(keys=keys, args=[*args, ending, result or b"", self.layout])
        return bool(applied), (old.decode() if old else None)

    def claim(self, job_id: str, fields: dict[str, Any], run_token: str, lease_seconds: int) -> tuple[bool, str | None]:
        """queued -> running of this job for one run, with its lease, atomically; (claimed, old status)."""
        reply = self._claim_reply(job_id, fields, run_token, lease_seconds)
        if reply[0] is None:
            return False, (reply[1].decode() if reply[1] else None)
        return True, "queued"

    def claim_next(self, fields: dict[str, Any], run_token: str, lease_seconds: int) -> tuple[str, int] | None:
        """queued -> running of the next job in fair order between tenants (jobs/fair_queue.py)
        for one run, with its lease; (its id, its attempt), or None when nothing is queued."""
        reply = self._claim_reply("", fields, run_token, lease_seconds)
        if reply[0] is None:
            return None
        return reply[0].decode(), int(reply[1])

    def _claim_reply(self, job_id: str, fields: dict[str, Any], run_token: str, lease_seconds: int) -> list[Any]:
        keys = [QUEUE_KEY, RUNNING_KEY, SERVED_KEY, SERVE_COUNTER_KEY]
        args = [
            job_id,
            json.dumps(encode_fields({**fields, "run_token": run_token})),
            json.dumps(run_token),
            lease_seconds,
            json.dumps(utc_now()),
            EVENTS_MAXLEN,
            self.ttl,
            self.layout,
        ]
        reply = list(self._claim(keys=keys, args=args))
        if reply[0] is not None and int(reply[1]) == 1 and int(reply[3]) == 1:  # a first start: how long it waited
            self._record_queue_wait(reply[2])
        return reply

    def _record_queue_wait(self, created_at: bytes | None) -> None:
        """Best effort: a metric that cannot be written must not undo a claim that was made."""
        waited = telemetry.seconds_since(created_at)
        if waited is None:
            return
        try:
            telemetry.record_job_started(self.redis, waited)
        except redis.RedisError as exc:
            logging.getLogger(__name__).warning("queue wait not recorded: %s", exc)

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
                "error": problem_body(
                    "worker-lost", f"the worker running this job stopped {max_attempts} times; giving up"
                ),
            }
        )
        events = [status_event("failed"), status_event("queued"), EVENTS_MAXLEN, self.ttl]
        outcomes = []
        for raw in self.redis.smembers(RUNNING_KEY):
            job_id = raw.decode()
            keys = [job_key(job_id), lease_key(job_id), RUNNING_KEY, QUEUE_KEY, events_key(job_id)]
            keys.append(telemetry.JOBS_TOTAL_KEY)
            args = [job_id, max_attempts, json.dumps(failed), *events, self.layout]
            outcome = self._reap(keys=keys, args=args).decode()
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

    def publish(
        self,
        job_id: str,
        run_token: str,
        fields: dict[str, Any],
        event: dict[str, Any],
        *,
        snapshot: tuple[int, bytes] | None = None,
        history: str | None = None,
    ) -> bool:
        """A progress write in one step: the job's fields, a progress event, a line of loss
        history, and a snapshot's image with its event, so that a client that sees the snapshot
        listed (or announced) can fetch it. Only while `run_token` holds the job; False if not."""
        iteration, image = snapshot if snapshot is not None else (0, b"")
        keys = [job_key(job_id), events_key(job_id), losses_key(job_id), snapshot_key(job_id, iteration)]
        keys.append(telemetry.SNAPSHOTS_KEY)
        args = [
            json.dumps(run_token),
            json.dumps(encode_fields(fields)),
            json.dumps(event),
            history or "",
            image,
            json.dumps({"iteration": iteration}) if snapshot is not None else "",
            EVENTS_MAXLEN,
            self.ttl,
            job_id,
            self.layout,
        ]
        return bool(self._publish(keys=keys, args=args))

    def _emit(self, pipe: redis.client.Pipeline, job_id: str, kind: EventKind, data: str) -> None:
        pipe.xadd(events_key(job_id), {"type": kind, "data": data}, maxlen=EVENTS_MAXLEN, approximate=True)
        pipe.expire(events_key(job_id), self.ttl)

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        fields: dict[str, Any],
        run_token: str | None = None,
        result_png: bytes | None = None,
    ) -> bool:
        """Running -> a final status (with the result, if any, stored in the same script), only for
        the run holding the job; False if it was no longer running or another run holds it now."""
        started_at = self.redis.hget(job_key(job_id), "started_at")  # read first: a retry then changes nothing
        final = {**fields, "status": status, "finished_at": utc_now(), "run_token": None, "finished_by": run_token}
        # The counters change in the transition's own script: counted once, even if this run
        # dies or Redis fails right after.
        counters = telemetry.Commands()
        if status == "succeeded":
            counters.incr(completions_key(job_id))
            counters.expire(completions_key(job_id), self.ttl)
        telemetry.record_job_final(counters, status, telemetry.seconds_since(started_at))
        applied, _ = self.transition(job_id, ["running"], final, run_token, also=counters, result=result_png)
        if not applied and run_token is not None:
            # This very finish may have been applied already: a reply lost, the call made again.
            applied = self.redis.hget(job_key(job_id), "finished_by") == json.dumps(run_token).encode()
        if applied:
            pipe = self.redis.pipeline(transaction=True)
            pipe.srem(RUNNING_KEY, job_id)
            pipe.delete(lease_key(job_id), checkpoint_key(job_id))
            pipe.execute()
            self.refresh_expiry(job_id)
        return applied

    def refresh_expiry(self, job_id: str) -> None:
        """A finished job stays readable for the TTL from its end, not from its submission."""
        record = self.get(job_id)
        if record is None:
            return
        keys = [job_key(job_id), result_key(job_id), events_key(job_id), losses_key(job_id)]
        keys += [snapshot_key(job_id, i) for i in record.snapshots]  # its inputs went when it ended
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.expire(key, self.ttl)
        pipe.delete(cancel_key(job_id))
        pipe.execute()

    def cancel(self, job_id: str) -> tuple[str, str | None]:
        """Cancel a queued job, or ask a running one to stop (its run sees the flag within
        CHECK_SECONDS); (outcome, status before): 'canceled', 'requested', 'unchanged' (finished
        already) or 'missing'."""
        keys = [job_key(job_id), QUEUE_KEY, cancel_key(job_id), events_key(job_id), telemetry.JOBS_TOTAL_KEY]
        args = [
            job_id,
            json.dumps(utc_now()),
            status_event("canceled"),
            status_event("running", cancel_requested=True),
            EVENTS_MAXLEN,
            self.ttl,
            self.layout,
        ]
        outcome, old = self._cancel(keys=keys, args=args)
        return outcome.decode(), (old.decode() if old else None)
