"""The Redis layout of the service and the job record: the one place that defines them.

A job is a hash `nst:job:{id}` whose fields each hold one JSON value, so that the worker's
progress writes and the API's cancel touch different fields and never overwrite each other.
Beside it: the inputs, snapshots, the result, a checkpoint, and two keys for watchers:
- `nst:job:{id}:events`, a Redis Stream with an entry at each status change, progress write and
  snapshot, written in the same transaction as the change it reports. Its entry ids are the
  Server-Sent Events' ids; it is trimmed (approximately) to EVENTS_MAXLEN entries.
- `nst:job:{id}:losses`, the whole loss history as text lines "iteration total content style",
  appended at each progress write: a 20000-iteration job keeps a few thousand short lines.
`worker/state.py` writes all of it (sync, for the worker and the API's submit and cancel);
`api/reader.py` reads it (async, for the API's read path).
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

PREFIX = "nst"
QUEUE_KEY = f"{PREFIX}:queue"  # sorted set: queued job ids by submission order
JOBS_KEY = f"{PREFIX}:jobs"  # sorted set: every job id by submission order, for listing
SEQUENCE_KEY = f"{PREFIX}:sequence"  # counter giving each job its order
WORKERS_KEY = f"{PREFIX}:workers"  # sorted set: worker name -> last heartbeat (unix time)
RUNNING_KEY = f"{PREFIX}:running"  # set: ids of running jobs, each held by a lease
# hash: worker name -> JSON of what it reports with its heartbeat (device, precision, memory budget)
WORKER_INFO_KEY = f"{PREFIX}:worker-info"

# Fair sharing between tenants (worker/fair_queue.py). A tenant is an API key's id, or OPEN_TENANT
# for every job of a service without keys. Each tenant has its own queue of job ids; a worker
# takes the next job from the tenant with the fewest running jobs, then the one served longest ago.
OPEN_TENANT = "~open"  # "~" is in no API key's id
TENANTS_KEY = f"{PREFIX}:queue:tenants"  # sorted set: tenants with queued jobs -> their oldest job's sequence
SERVED_KEY = f"{PREFIX}:queue:served"  # hash: tenant -> the serve number of its last started job
SERVE_COUNTER_KEY = f"{PREFIX}:queue:serve-counter"  # counter giving each start its serve number

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


def worker_name(host: str, pid: int) -> str:
    """How a job worker names itself: in the live set, its heartbeat, the jobs it runs."""
    return f"{host}:{pid}"


def webhook_worker_name(host: str, pid: int) -> str:
    return f"webhooks:{host}:{pid}"


def ready_key(name: str) -> str:
    """Set by a worker (job or webhook) once it consumes its queue; `nst up` waits for its own."""
    return f"{PREFIX}:ready:{name}"


def claim_key(run_token: str) -> str:
    """The job a run (its token) claimed: a claim repeated after a lost reply takes no second job."""
    return f"{PREFIX}:claim:{run_token}"


def checkpoint_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:checkpoint"


def completions_key(job_id: str) -> str:
    """How many times the job was recorded as succeeded: exactly 1, or the service is wrong."""
    return f"{PREFIX}:job:{job_id}:completions"


def webhook_sent_key(job_id: str, event: str) -> str:
    """Set when the job's `event` webhook is queued: once a job for started and completed, at most
    once a NST_WEBHOOK_SNAPSHOT_INTERVAL_SECONDS for snapshot (the key expires then)."""
    return f"{PREFIX}:job:{job_id}:webhook:{event}"


def owner_jobs_key(owner: str) -> str:
    """Sorted set: the job ids of one API key (its id) by submission order, for its listing.
    Like JOBS_KEY it has no expiry of its own: a listing drops the ids whose job has expired."""
    return f"{PREFIX}:owner:{owner}:jobs"


def tenant_of(owner: str | None) -> str:
    """The tenant whose limits and queue a job counts against: its API key's id, or OPEN_TENANT."""
    return owner if owner is not None else OPEN_TENANT


def owner_active_key(tenant: str) -> str:
    """Sorted set: the ids of one tenant's jobs that may still be queued or running (scored by
    when each was admitted), for NST_MAX_ACTIVE_JOBS_PER_KEY; worker/tenancy.py drops the
    finished and expired ones each time it counts them."""
    return f"{PREFIX}:owner:{tenant}:active"


def tenant_queue_key(tenant: str) -> str:
    """Sorted set: the tenant's queued job ids by sequence (fair_queue.py takes from its head)."""
    return f"{PREFIX}:tenant:{tenant}:queue"


def submissions_key(tenant: str, window: int) -> str:
    """Counter: the tenant's accepted submissions in one minute (`window` = unix time // 60)."""
    return f"{PREFIX}:tenant:{tenant}:submissions:{window}"


def held_total_key(tenant: str) -> str:
    """Counter: the bytes the tenant's jobs hold in Redis (inputs, snapshots, result)."""
    return f"{PREFIX}:tenant:{tenant}:held"


def held_jobs_key(tenant: str) -> str:
    """Hash: job id -> the bytes that job holds (the parts of held_total_key)."""
    return f"{PREFIX}:tenant:{tenant}:held:jobs"


def held_until_key(tenant: str) -> str:
    """Sorted set: job id -> when its bytes expire (unix time); past it they leave the total."""
    return f"{PREFIX}:tenant:{tenant}:held:until"


def lua_layout() -> str:
    """The key layout as `string.format` templates, for Lua scripts that find keys of a job or a
    tenant they learn only inside the script (the next job of the fair queue, a job's tenant).
    Job ids are hex and tenants key ids: nothing in them means anything to a format string."""
    layout = {
        "job": job_key("%s"),
        "lease": lease_key("%s"),
        "checkpoint": checkpoint_key("%s"),
        "claim": claim_key("%s"),
        "queue": QUEUE_KEY,
        "events": events_key("%s"),
        "content": content_key("%s"),
        "style": style_key("%s", 0).removesuffix("0") + "%d",
        "tenant_queue": tenant_queue_key("%s"),
        "held_total": held_total_key("%s"),
        "held_jobs": held_jobs_key("%s"),
        "held_until": held_until_key("%s"),
        "tenants": TENANTS_KEY,
        "open": OPEN_TENANT,
    }
    return json.dumps(layout)


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
    cancel_requested: bool = False  # a cancel of the running job is pending
    run_token: str | None = None  # names the attempt that holds the job; stale runs see it change
    # Memory (core.memory): the run's estimate of its peak and whether it recomputes activations.
    memory_bytes: int | None = None
    checkpointing: bool | None = None
    # Coarse-to-fine: the stage running, {"index": from 1, "count", "height", "width"}.
    scale: dict[str, int] | None = None
    owner: str | None = None  # the id of the API key that made the job (never the key); None without keys
    input_bytes: int = 0  # what its uploads take in Redis, until it ends (then they are deleted)
    finished_by: str | None = None  # the run token that ended it: a repeated finish knows it was its own
    # Webhooks (worker/webhooks.py): the URL checked at submit, and the events it gets.
    webhook: str | None = None
    webhook_events: list[str] = Field(default_factory=list)

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


EVENTS_MAXLEN = 1000  # stream entries kept per job; a watcher further behind gets the job's state instead

EventKind = Literal["status", "progress", "snapshot"]


def events_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def losses_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:losses"


def history_line(iteration: int, losses: dict[str, float]) -> str:
    """One line of the loss history: compact, and parsed back by `parse_history`."""
    return f"{iteration} {losses['total']:.7g} {losses['content']:.7g} {losses['style']:.7g}\n"


def parse_history(text: str) -> dict[str, list[float]]:
    """The history as columns: {"iteration": [...], "total": [...], "content": [...], "style": [...]}."""
    columns: dict[str, list[float]] = {"iteration": [], "total": [], "content": [], "style": []}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        columns["iteration"].append(int(parts[0]))
        for name, value in zip(("total", "content", "style"), parts[1:], strict=True):
            columns[name].append(float(value))
    return columns
