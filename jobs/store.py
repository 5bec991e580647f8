"""Writes of job state (and the worker's reads), synchronous: the worker and the API's submit and cancel.

The key layout and the job record are in `jobs/keys.py`. Status changes go through Lua scripts
(jobs/lua/, called by name through jobs/scripts.py), atomic in Redis: a job that was canceled
while queued cannot be started, and a finished job cannot be reopened. Every change a watcher
cares about (a status, progress, a snapshot) adds an entry to the job's event stream in the same
transaction, so a client that sees an event can read what it announces.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, cast

import redis
from redis.typing import EncodableT

from jobs import scripts, telemetry
from jobs.blobs import BlobStore, checkpoint_path, input_paths
from jobs.fair_queue import PEEK_NEXT, QUEUE_POSITION
from jobs.keys import (
    EVENTS_MAXLEN,
    JOBS_KEY,
    QUEUE_KEY,
    RUNNING_KEY,
    SEQUENCE_KEY,
    SERVE_COUNTER_KEY,
    SERVED_KEY,
    SWEEP_LOCK_KEY,
    TENANTS_KEY,
    cancel_key,
    checkpoint_key,
    completions_key,
    content_key,
    events_key,
    job_key,
    job_keys,
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
from jobs.record import TERMINAL, EventKind, JobRecord, JobStatus, decode_value, encode_fields, utc_now
from jobs.tenancy import Limits, TenantLimits, tenant_of
from jobs.workers import WorkerRegistry

# The scripts (jobs/lua/) that change a job, each atomic in Redis; the tenancy prelude they share
# takes the key layout (keys.lua_layout()) as its `layout` argument.
_TRANSITION = scripts.load("transition")
_CLAIM = scripts.load("claim")
_RENEW = scripts.load("renew")
_REAP = scripts.load("reap")
_CANCEL = scripts.load("cancel")
_ADOPT = scripts.load("adopt")
_DEQUEUE = scripts.load("dequeue")
_PUBLISH = scripts.load("publish")
_DELETE = scripts.load("delete")
# How long a deleted running job's cancel flag stays: its run sees it (or the job gone) within a
# second; the flag outlives that by far, and is gone long before the job's other keys would be.
DELETED_FLAG_SECONDS = 300


def status_event(status: str, **extra: Any) -> str:
    """The data of a status entry in a job's event stream."""
    return json.dumps({"status": status, **extra})


class JobStore:
    """Reads and writes of job state; the only code that knows the key layout."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds
        self._transition = _TRANSITION.register(client)
        self._claim = _CLAIM.register(client)
        self._renew = _RENEW.register(client)
        self._reap = _REAP.register(client)
        self._cancel = _CANCEL.register(client)
        self._publish = _PUBLISH.register(client)
        self._dequeue = _DEQUEUE.register(client)
        self._adopt = _ADOPT.register(client)
        self._delete = _DELETE.register(client)
        self._position = QUEUE_POSITION.register(client)
        self._peek = PEEK_NEXT.register(client)
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
    def create(self, record: JobRecord, content: bytes = b"", styles: Sequence[bytes] = ()) -> JobRecord:
        """Store a new queued job in one transaction. A job whose inputs are in the blob store
        (`record.blobs`: stored there before, `record.style_count` and `record.input_bytes` set)
        keeps no byte of them here; any other (tests, tools) has `content` and `styles` stored
        in Redis, as the previous version did."""
        sequence = int(self.redis.incr(SEQUENCE_KEY))
        update: dict[str, Any] = {"sequence": sequence}
        if record.blobs:
            if content or styles:
                raise ValueError("a job whose inputs are in the blob store takes no input bytes")
        else:
            input_bytes = len(content) + sum(len(style) for style in styles)
            update |= {"style_count": len(styles), "input_bytes": input_bytes}
        record = record.model_copy(update=update)
        tenant = tenant_of(record.owner)
        pipe = self.redis.pipeline(transaction=True)
        fields = dict[EncodableT, EncodableT](record.to_redis().items())  # hset's mapping is invariant in its keys
        pipe.hset(job_key(record.id), mapping=fields)
        pipe.expire(job_key(record.id), self.ttl)
        if not record.blobs:
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
        return int(self._adopt(keys={"queue": QUEUE_KEY}, args={"layout": self.layout}))

    def queued_count(self) -> int:
        return int(self.redis.zcard(QUEUE_KEY))

    def forget(self, job_id: str, style_count: int = 0, owner: str | None = None) -> None:
        """Remove a job that could not be queued (the broker refused it). The record names its
        styles and owner: the arguments are kept for callers of the previous version."""
        self.delete(job_id)

    def delete(self, job_id: str) -> bool:
        """Remove a job and everything Redis holds of it, in one script (jobs/lua/delete.lua): out
        of the queues, the listings and its tenant's figures; a running one is told to stop.
        Its objects in the blob store are the caller's to remove. False if there was no job."""
        keys = {
            "job": job_key(job_id), "queue": QUEUE_KEY, "jobs": JOBS_KEY, "running": RUNNING_KEY,
            "cancel": cancel_key(job_id),
        }  # fmt: skip
        args: dict[str, scripts.Value] = {
            "job": job_id,
            "keys": json.dumps(job_keys(job_id)),
            "flag_seconds": DELETED_FLAG_SECONDS,
            "layout": self.layout,
        }
        return bool(self._delete(keys=keys, args=args))

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> JobRecord | None:
        fields = cast(dict[bytes, bytes], self.redis.hgetall(job_key(job_id)))  # bytes: the client decodes nothing
        return JobRecord.from_redis(fields) if fields else None

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to start (in fair order between tenants); None when it is not waiting."""
        ahead = self._position(
            keys={"running": RUNNING_KEY, "served": SERVED_KEY}, args={"job": job_id, "layout": self.layout}
        )
        return None if ahead is None else int(ahead) + 1

    def peek_next(self) -> tuple[str, str | None] | None:
        """The job that would be claimed next in fair order, and its batch key; None when nothing
        is queued. A batching worker claims it (`claim`) only if it can join its batch."""
        reply = self._peek(keys={"running": RUNNING_KEY, "served": SERVED_KEY}, args={"layout": self.layout})
        if not reply or reply[0] is None:
            return None
        key = decode_value(reply[1])
        return reply[0].decode(), key if isinstance(key, str) else None

    def inputs(self, job_id: str, style_count: int, blobs: BlobStore | None = None) -> tuple[bytes, list[bytes]] | None:
        """The job's content and styles, from `blobs` for a job whose files are there (its record's
        `blobs`), else from Redis (a job an earlier version queued); None if one is missing.
        The blob store's BlobError goes to the caller (it retries)."""
        values: list[bytes | None]
        if blobs is not None:
            values = [blobs.get(path) for path in input_paths(job_id, style_count)]
        else:
            keys = [content_key(job_id), *(style_key(job_id, i) for i in range(style_count))]
            values = cast(list[bytes | None], self.redis.mget(keys))  # bytes: the client decodes nothing
        present = [value for value in values if value is not None]
        if len(present) != len(values):
            return None
        return present[0], present[1:]

    def transition(
        self,
        job_id: str,
        allowed: list[str],
        fields: dict[str, Any],
        run_token: str | None = None,
        also: telemetry.Commands | None = None,
        result: bytes | None = None,
        result_bytes: int = 0,
    ) -> tuple[bool, str | None]:
        """Apply `fields` only if the job's status is in `allowed` (and, given `run_token`, the
        job is still held by that run); returns (applied, old status). A new status is reported
        in the job's event stream; `also`'s commands run in the same script, only if it applies.
        A final status deletes the job's inputs there and then (nothing can run it again), stores
        `result`, and what the job holds for its tenant becomes its snapshots and its result (the
        size of `result`, or `result_bytes` for a result kept in the blob store)."""
        keys = {"job": job_key(job_id), "events": events_key(job_id), "result": result_key(job_id)}
        args: dict[str, scripts.Value] = {
            "allowed": json.dumps(allowed),
            "fields": json.dumps(encode_fields(fields)),
            "token": json.dumps(run_token) if run_token is not None else None,
            "event": status_event(fields["status"]) if "status" in fields else None,
            "maxlen": EVENTS_MAXLEN,
            "ttl": self.ttl,
            "commands": json.dumps(also.commands) if also is not None and also.commands else None,
            "ending": job_id if fields.get("status") in TERMINAL else None,
            "result": result or None,  # no bytes, no result (as before: an empty image stores nothing)
            "result_bytes": len(result) if result else result_bytes,
            "layout": self.layout,
        }
        applied, old = self._transition(keys=keys, args=args)
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
        reply = self._claim_reply(None, fields, run_token, lease_seconds)
        if reply[0] is None:
            return None
        return reply[0].decode(), int(reply[1])

    def _claim_reply(self, job_id: str | None, fields: dict[str, Any], run_token: str, lease_seconds: int) -> list[Any]:
        """The claim script's reply; `job_id` None claims the next job in fair order."""
        keys = {"queue": QUEUE_KEY, "running": RUNNING_KEY, "served": SERVED_KEY, "serve_counter": SERVE_COUNTER_KEY}
        args: dict[str, scripts.Value] = {
            "job": job_id,
            "fields": json.dumps(encode_fields({**fields, "run_token": run_token})),
            "token": json.dumps(run_token),
            "lease": lease_seconds,
            "now": json.dumps(utc_now()),
            "maxlen": EVENTS_MAXLEN,
            "ttl": self.ttl,
            "layout": self.layout,
        }
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
        keys = {"lease": lease_key(job_id), "job": job_key(job_id)}
        return bool(self._renew(keys=keys, args={"token": json.dumps(run_token), "seconds": lease_seconds}))

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
        outcomes = []
        for raw in cast(set[bytes], self.redis.smembers(RUNNING_KEY)):  # bytes: the client decodes nothing
            job_id = raw.decode()
            keys = {
                "job": job_key(job_id),
                "lease": lease_key(job_id),
                "running": RUNNING_KEY,
                "queue": QUEUE_KEY,
                "events": events_key(job_id),
                "totals": telemetry.JOBS_TOTAL_KEY,
            }
            args: dict[str, scripts.Value] = {
                "job": job_id,
                "max_attempts": max_attempts,
                "failed_fields": json.dumps(failed),
                "failed_event": status_event("failed"),
                "requeued_event": status_event("queued"),
                "maxlen": EVENTS_MAXLEN,
                "ttl": self.ttl,
                "layout": self.layout,
            }
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
            decode_value(status) if status else None,
            decode_value(token) if token else None,
            bool(canceled),
        )

    def save_checkpoint(self, job_id: str, data: bytes, blobs: BlobStore | None = None) -> None:
        """In `blobs` for a job whose files are there, else in Redis (a job of an earlier version)."""
        if blobs is not None:
            blobs.put(checkpoint_path(job_id), data)
        else:
            self.redis.set(checkpoint_key(job_id), data, ex=self.ttl)

    def checkpoint(self, job_id: str, blobs: BlobStore | None = None) -> bytes | None:
        if blobs is not None:
            return blobs.get(checkpoint_path(job_id))
        return cast(bytes | None, self.redis.get(checkpoint_key(job_id)))  # bytes: the client decodes nothing

    def completions(self, job_id: str) -> int:
        return int(self.redis.get(completions_key(job_id)) or 0)

    # -- the blob store's sweeper (worker/sweeper.py) ----------------------------------------
    def statuses(self, job_ids: list[str]) -> dict[str, str | None]:
        """Each job's status in one round trip; None for a job whose record is gone (expired, deleted)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "status")
        values = cast(list[bytes | None], pipe.execute())  # bytes: the client decodes nothing
        return {job_id: decode_value(value) if value else None for job_id, value in zip(job_ids, values, strict=True)}

    def take_sweep_lock(self, owner: str, seconds: float) -> bool:
        """True for the one caller that may sweep for the next `seconds` (the lock lapses by itself)."""
        return bool(self.redis.set(SWEEP_LOCK_KEY, owner, nx=True, px=max(1, int(seconds * 1000))))

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
        iteration, image = snapshot if snapshot is not None else (0, None)
        keys = {
            "job": job_key(job_id),
            "events": events_key(job_id),
            "losses": losses_key(job_id),
            "snapshot": snapshot_key(job_id, iteration),
            "snapshots": telemetry.SNAPSHOTS_KEY,
        }
        args: dict[str, scripts.Value] = {
            "token": json.dumps(run_token),
            "fields": json.dumps(encode_fields(fields)),
            "progress": json.dumps(event),
            "history": history or None,
            "image": image or None,  # empty bytes store nothing, as before
            "snapshot_event": json.dumps({"iteration": iteration}) if snapshot is not None else None,
            "maxlen": EVENTS_MAXLEN,
            "ttl": self.ttl,
            "job": job_id,
            "layout": self.layout,
        }
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
        result_bytes: int = 0,
    ) -> bool:
        """Running -> a final status (with the result, if any, stored in the same script), only for
        the run holding the job; False if it was no longer running or another run holds it now, or
        it is gone (deleted). `result_bytes`: the size of a result the run stored in the blob store
        (no bytes of it in Redis), counted in what the job holds for its tenant."""
        started_at = self.redis.hget(job_key(job_id), "started_at")  # read first: a retry then changes nothing
        final = {**fields, "status": status, "finished_at": utc_now(), "run_token": None, "finished_by": run_token}
        # The counters change in the transition's own script: counted once, even if this run
        # dies or Redis fails right after.
        counters = telemetry.Commands()
        if status == "succeeded":
            counters.incr(completions_key(job_id))
            counters.expire(completions_key(job_id), self.ttl)
        telemetry.record_job_final(counters, status, telemetry.seconds_since(started_at))
        applied, _ = self.transition(
            job_id, ["running"], final, run_token, also=counters, result=result_png, result_bytes=result_bytes
        )
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
        keys = {
            "job": job_key(job_id),
            "queue": QUEUE_KEY,
            "cancel": cancel_key(job_id),
            "events": events_key(job_id),
            "totals": telemetry.JOBS_TOTAL_KEY,
        }
        args: dict[str, scripts.Value] = {
            "job": job_id,
            "finished_at": json.dumps(utc_now()),
            "canceled_event": status_event("canceled"),
            "requested_event": status_event("running", cancel_requested=True),
            "maxlen": EVENTS_MAXLEN,
            "ttl": self.ttl,
            "layout": self.layout,
        }
        outcome, old = self._cancel(keys=keys, args=args)
        return outcome.decode(), (old.decode() if old else None)
