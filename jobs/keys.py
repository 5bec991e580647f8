"""The Redis layout of the service: the one place that names its keys.

A job is a hash `nst:job:{id}` (its fields: jobs/record.py). Beside it: its snapshots and two
keys for watchers (its inputs, result and checkpoint are in the blob store, jobs/blobs.py; the
content/style/result/checkpoint keys below hold them only for jobs of an earlier version):
- `nst:job:{id}:events`, a Redis Stream with an entry at each status change, progress write and
  snapshot, written in the same transaction as the change it reports. Its entry ids are the
  Server-Sent Events' ids; it is trimmed (approximately) to EVENTS_MAXLEN entries.
- `nst:job:{id}:losses`, the whole loss history as text lines "iteration total content style",
  appended at each progress write: a 20000-iteration job keeps a few thousand short lines.
`jobs/store.py` writes all of it (sync, for the worker and the API's submit and cancel);
`jobs/reader.py` reads it (async, for the API's read path). No module outside jobs/ names a key.
"""

from __future__ import annotations

import json

PREFIX = "nst"
QUEUE_KEY = f"{PREFIX}:queue"  # sorted set: queued job ids by submission order
JOBS_KEY = f"{PREFIX}:jobs"  # sorted set: every job id by submission order, for listing
SEQUENCE_KEY = f"{PREFIX}:sequence"  # counter giving each job its order
WORKERS_KEY = f"{PREFIX}:workers"  # sorted set: worker name -> last heartbeat (unix time)
RUNNING_KEY = f"{PREFIX}:running"  # set: ids of running jobs, each held by a lease
# hash: worker name -> JSON of what it reports with its heartbeat (device, precision, memory budget)
WORKER_INFO_KEY = f"{PREFIX}:worker-info"
# Taken (SET NX EX) by the worker that sweeps the blob store; it lapses after one sweep interval,
# so one worker of a cluster sweeps each interval (worker/sweeper.py).
SWEEP_LOCK_KEY = f"{PREFIX}:sweep-lock"

# Fair sharing between tenants (jobs/fair_queue.py). A tenant is an API key's id, or OPEN_TENANT
# for every job of a service without keys. Each tenant has its own queue of job ids; a worker
# takes the next job from the tenant with the fewest running jobs, then the one served longest ago.
OPEN_TENANT = "~open"  # "~" is in no API key's id
TENANTS_KEY = f"{PREFIX}:queue:tenants"  # sorted set: tenants with queued jobs -> their oldest job's sequence
SERVED_KEY = f"{PREFIX}:queue:served"  # hash: tenant -> the serve number of its last started job
SERVE_COUNTER_KEY = f"{PREFIX}:queue:serve-counter"  # counter giving each start its serve number


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


def sweep_key(sweep_id: str) -> str:
    """A sweep (jobs/sweeps.py): its record as JSON, its owner, axes and cells with their job ids.
    It expires with its jobs (each read extends it to the furthest of their expiries). Not the
    blob store's sweeper (SWEEP_LOCK_KEY): a sweep here is a group of jobs over a parameter grid."""
    return f"{PREFIX}:sweep:{sweep_id}"


def owner_active_key(tenant: str) -> str:
    """Sorted set: the ids of one tenant's jobs that may still be queued or running (scored by
    when each was admitted), for NST_MAX_ACTIVE_JOBS_PER_KEY; jobs/tenancy.py drops the
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


# The events a job's webhook may be sent (jobs/webhooks.py's WebhookEvent), each with its guard key.
WEBHOOK_EVENTS = ("started", "snapshot", "completed")


def job_keys(job_id: str) -> list[str]:
    """Every key of one job whose name its id alone gives (its styles' and snapshots' need its
    record): what deleting the job removes besides those."""
    return [
        job_key(job_id), events_key(job_id), losses_key(job_id), content_key(job_id), result_key(job_id),
        checkpoint_key(job_id), cancel_key(job_id), lease_key(job_id), completions_key(job_id),
        *(webhook_sent_key(job_id, event) for event in WEBHOOK_EVENTS),
    ]  # fmt: skip


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
        "snapshot": snapshot_key("%s", 0).removesuffix("0") + "%d",
        "owner_jobs": owner_jobs_key("%s"),
        "active": owner_active_key("%s"),
        "tenant_queue": tenant_queue_key("%s"),
        "held_total": held_total_key("%s"),
        "held_jobs": held_jobs_key("%s"),
        "held_until": held_until_key("%s"),
        "tenants": TENANTS_KEY,
        "open": OPEN_TENANT,
    }
    return json.dumps(layout)


EVENTS_MAXLEN = 1000  # stream entries kept per job; a watcher further behind gets the job's state instead


def events_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:events"


def losses_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}:losses"
