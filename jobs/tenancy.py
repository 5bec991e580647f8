"""What one tenant (an API key; every job together when the service has no keys) may make the
service hold, checked at submit in one Lua script:

- active jobs (NST_MAX_ACTIVE_JOBS_PER_KEY): queued plus running. Each tenant has a sorted set of
  the job ids it submitted that may still be active (`owner_active_key`), scored by when each took
  its place; ids whose job has reached a final status (or expired) leave it each time it is counted,
  so the status scripts need not know about it. A place is taken just before the job is stored,
  so an id without a job counts for RESERVED_SECONDS before it is taken for expired.
- submissions a minute (NST_MAX_SUBMISSIONS_PER_MINUTE): a counter per tenant and minute.
- bytes held in Redis (NST_MAX_STORED_BYTES_PER_KEY): a ledger per tenant, job id -> bytes, with
  when each job's bytes expire. A job's inputs count from its submission until it ends (they are
  deleted then), its snapshots as they are written, its result from its end; all of it until the
  job's keys expire. The scripts that change a job keep the ledger (jobs/lua/tenancy.lua).

Counting and taking happen in the same script: two submissions of one tenant at the same moment
cannot both take the last place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

from jobs import scripts
from jobs.keys import (
    OPEN_TENANT,
    held_jobs_key,
    held_total_key,
    held_until_key,
    job_key,
    owner_active_key,
    submissions_key,
)

RESERVED_SECONDS = 60.0  # far above the moment between taking a place and storing the job
WINDOW_SECONDS = 60  # submissions are counted per minute of the clock

# Counting and taking, and giving back (jobs/lua/admit.lua, release.lua); both take the tenant's
# keys that _keys names.
_ADMIT = scripts.load("admit")
_RELEASE = scripts.load("release")


def tenant_of(owner: str | None) -> str:
    """The tenant whose limits and queue a job counts against: its API key's id, or OPEN_TENANT."""
    return owner if owner is not None else OPEN_TENANT


@dataclass(frozen=True)
class Limits:
    """A tenant's limits; `active_jobs` None is no limit."""

    active_jobs: int | None
    submissions_per_minute: int
    stored_bytes: int


@dataclass(frozen=True)
class Refusal:
    """Which limit refused a submission, the tenant's figure for it, and when to try again."""

    limit: str  # "active", "submissions" or "bytes"
    value: int
    retry_after: int


class TenantLimits:
    """Admission against a tenant's limits, and the figures behind them (for tests and operators)."""

    def __init__(self, client: redis.Redis, ttl_seconds: int, limits: Limits) -> None:
        self.redis = client
        # The tenant's keys expire a while after its jobs would (their TTL from the last submission,
        # plus a job's run), so a tenant that stops submitting leaves nothing behind.
        self.ttl = ttl_seconds
        self.limits = limits
        self._admit = _ADMIT.register(client)
        self._release = _RELEASE.register(client)

    def check(self, tenant: str) -> Refusal | None:
        """Whether a submission could be admitted now, taking nothing: asked before the upload is
        read, so a tenant over a limit is told at once."""
        return self._run(tenant, None, 0, take=False)

    def admit(self, tenant: str, job_id: str, input_bytes: int) -> Refusal | None:
        """Take a place, a submission and `input_bytes` for the job; None when taken, else what refused it."""
        return self._run(tenant, job_id, input_bytes, take=True)

    def release(self, tenant: str, job_id: str) -> None:
        """Give back what admit took for a job that was not queued after all."""
        self._release(keys=self._keys(tenant, time.time()), args={"job": job_id})

    def active_jobs(self, tenant: str) -> int:
        """The tenant's active jobs now (counting drops the ended ones)."""
        refusal = TenantLimits(self.redis, self.ttl, Limits(1, 2**62, 2**62)).check(tenant)
        return refusal.value if refusal is not None and refusal.limit == "active" else 0

    def held_bytes(self, tenant: str) -> int:
        return int(self.redis.get(held_total_key(tenant)) or 0)

    def _keys(self, tenant: str, now: float) -> dict[str, scripts.Key]:
        window = int(now // WINDOW_SECONDS)
        return {
            "active": owner_active_key(tenant),
            "submissions": submissions_key(tenant, window),
            "held_total": held_total_key(tenant),
            "held_jobs": held_jobs_key(tenant),
            "held_until": held_until_key(tenant),
        }

    def _run(self, tenant: str, job_id: str | None, input_bytes: int, *, take: bool) -> Refusal | None:
        """Admission through admit.lua; `job_id` None only looks (nothing is taken then)."""
        now = time.time()
        limits = self.limits
        args: dict[str, scripts.Value] = {
            "job": job_id,
            "active_limit": limits.active_jobs or 0,
            "submission_limit": limits.submissions_per_minute,
            "bytes": input_bytes,
            "bytes_limit": limits.stored_bytes,
            "job_ttl": self.ttl,
            "ttl": self.ttl + 3600,
            "job_template": job_key("%s"),
            "take": 1 if take else 0,
            "reserved_seconds": RESERVED_SECONDS,
        }
        reply = self._admit(keys=self._keys(tenant, now), args=args)
        kind = reply[0].decode()
        if kind == "ok":
            return None
        if kind == "submissions":  # the count starts again with the next minute
            return Refusal(kind, int(reply[1]), WINDOW_SECONDS - int(now) % WINDOW_SECONDS)
        # An active place frees when a job ends; held bytes when a job's keys expire or it is deleted.
        return Refusal(kind, int(reply[1]), 30)
