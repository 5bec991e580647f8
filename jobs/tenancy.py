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
  job's keys expire. The scripts that change a job keep the ledger (fair_queue.TENANCY_LUA).

Counting and taking happen in the same script: two submissions of one tenant at the same moment
cannot both take the last place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis

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

# KEYS: active set, this minute's submissions, held total, held jobs, held until.
# ARGV: job id, active limit (0: none), submissions limit, bytes to hold, bytes limit, the job's
# TTL (its bytes count that long at most), the TTL of the tenant's keys, the job hash's key
# template, take (1) or only look (0), RESERVED_SECONDS. Returns {'ok'}, or the limit that refuses
# with the tenant's figure: {'active', count}, {'submissions', count}, {'bytes', held}. Taking
# twice for one job (a reply lost, the call made again) takes once.
_ADMIT = """
local job = ARGV[1]
local active_limit, submission_limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local bytes, bytes_limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local job_ttl, ttl, take = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[9] == '1'
local final = {['"succeeded"'] = true, ['"failed"'] = true, ['"canceled"'] = true}
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
if take and redis.call('HEXISTS', KEYS[4], job) == 1 then return {'ok'} end

local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local active = 0
for i = 1, #members, 2 do
  local status = redis.call('HGET', string.format(ARGV[8], members[i]), 'status')
  if (not status and tonumber(members[i + 1]) < now - tonumber(ARGV[10])) or (status and final[status]) then
    redis.call('ZREM', KEYS[1], members[i])
  else
    active = active + 1
  end
end
if active_limit > 0 and active >= active_limit then return {'active', active} end

local submitted = tonumber(redis.call('GET', KEYS[2]) or '0')
if submitted >= submission_limit then return {'submissions', submitted} end

local expired = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('DECRBY', KEYS[3], tonumber(redis.call('HGET', KEYS[4], id) or '0'))
  redis.call('HDEL', KEYS[4], id)
  redis.call('ZREM', KEYS[5], id)
end
local held = tonumber(redis.call('GET', KEYS[3]) or '0')
if held + bytes > bytes_limit or held >= bytes_limit then return {'bytes', held} end

if take then
  redis.call('ZADD', KEYS[1], now, job)
  redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], 2 * 60)
  redis.call('HSET', KEYS[4], job, bytes)
  redis.call('INCRBY', KEYS[3], bytes)
  redis.call('ZADD', KEYS[5], math.floor(now) + job_ttl, job)
end
for i = 1, 5 do
  if i ~= 2 then redis.call('EXPIRE', KEYS[i], ttl) end
end
return {'ok'}
"""

# Give back what _ADMIT took for a job that was not queued after all. KEYS as _ADMIT's; ARGV: job id.
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
if tonumber(redis.call('GET', KEYS[2]) or '0') > 0 then redis.call('DECR', KEYS[2]) end
local bytes = redis.call('HGET', KEYS[4], ARGV[1])
if bytes then
  redis.call('DECRBY', KEYS[3], tonumber(bytes))
  redis.call('HDEL', KEYS[4], ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[1])
end
"""


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
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)

    def check(self, tenant: str) -> Refusal | None:
        """Whether a submission could be admitted now, taking nothing: asked before the upload is
        read, so a tenant over a limit is told at once."""
        return self._run(tenant, "", 0, take=False)

    def admit(self, tenant: str, job_id: str, input_bytes: int) -> Refusal | None:
        """Take a place, a submission and `input_bytes` for the job; None when taken, else what refused it."""
        return self._run(tenant, job_id, input_bytes, take=True)

    def release(self, tenant: str, job_id: str) -> None:
        """Give back what admit took for a job that was not queued after all."""
        self._release(keys=self._keys(tenant, time.time()), args=[job_id])

    def active_jobs(self, tenant: str) -> int:
        """The tenant's active jobs now (counting drops the ended ones)."""
        refusal = TenantLimits(self.redis, self.ttl, Limits(1, 2**62, 2**62)).check(tenant)
        return refusal.value if refusal is not None and refusal.limit == "active" else 0

    def held_bytes(self, tenant: str) -> int:
        return int(self.redis.get(held_total_key(tenant)) or 0)

    def _keys(self, tenant: str, now: float) -> list[str]:
        window = int(now // WINDOW_SECONDS)
        return [
            owner_active_key(tenant),
            submissions_key(tenant, window),
            held_total_key(tenant),
            held_jobs_key(tenant),
            held_until_key(tenant),
        ]

    def _run(self, tenant: str, job_id: str, input_bytes: int, *, take: bool) -> Refusal | None:
        now = time.time()
        limits = self.limits
        args = [
            job_id,
            limits.active_jobs or 0,
            limits.submissions_per_minute,
            input_bytes,
            limits.stored_bytes,
            self.ttl,
            self.ttl + 3600,
            job_key("%s"),
            1 if take else 0,
            RESERVED_SECONDS,
        ]
        reply = self._admit(keys=self._keys(tenant, now), args=args)
        kind = reply[0].decode()
        if kind == "ok":
            return None
        if kind == "submissions":  # the count starts again with the next minute
            return Refusal(kind, int(reply[1]), WINDOW_SECONDS - int(now) % WINDOW_SECONDS)
        # An active place frees when a job ends; held bytes when a job's keys expire or it is deleted.
        return Refusal(kind, int(reply[1]), 30)
