"""NST_MAX_ACTIVE_JOBS_PER_KEY: how many jobs one API key may have queued or running at once.

Each key has a sorted set of the job ids it submitted that may still be active
(`owner_active_key`), scored by when each took its place. A submission counts it: the ids whose
job has reached a final status (or expired) leave the set there and then, so the job status
scripts need not know about keys. A place is taken before the job is stored, so an id without a
job counts for RESERVED_SECONDS before it is taken for expired. Counting and adding happen under
WATCH: two submissions of one key at the same moment cannot both take the last place.
"""

from __future__ import annotations

import json
import time

import redis

from worker.keys import TERMINAL, job_key, owner_active_key

RESERVED_SECONDS = 60.0  # far above the moment between taking a place and storing the job


class ActiveJobs:
    """The per-key count of active jobs, and the places under its limit."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        # The set expires as its jobs' hashes would (their TTL from the last submission), so a key
        # that stops submitting leaves nothing behind.
        self.ttl = ttl_seconds

    def reserve(self, owner: str, job_id: str, limit: int) -> int | None:
        """Take a place for `job_id` unless `owner` already has `limit` active jobs; None when
        taken, else how many it has."""
        key = owner_active_key(owner)
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    members = pipe.zrange(key, 0, -1, withscores=True)
                    ended = self._ended(members)
                    active = len(members) - len(ended)
                    pipe.multi()
                    if ended:
                        pipe.zrem(key, *ended)
                    if active < limit:
                        pipe.zadd(key, {job_id: time.time()})
                        pipe.expire(key, self.ttl)
                    pipe.execute()
                    return None if active < limit else active
                except redis.WatchError:
                    continue  # another submission of this key came in between: count again

    def release(self, owner: str, job_id: str) -> None:
        """Give back the place of a job that was not queued after all."""
        self.redis.zrem(owner_active_key(owner), job_id)

    def count(self, owner: str) -> int:
        """The owner's active jobs now (read only: for tests and operators)."""
        members = self.redis.zrange(owner_active_key(owner), 0, -1, withscores=True)
        return len(members) - len(self._ended(members))

    def _ended(self, members: list[tuple[bytes, float]]) -> list[bytes]:
        """The ids whose job is finished, or gone since well after its place was taken; read in
        one round trip (on another connection than the watching one: only the set is watched)."""
        if not members:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for raw_id, _ in members:
            pipe.hget(job_key(raw_id.decode()), "status")
        statuses = pipe.execute()
        settled = time.time() - RESERVED_SECONDS
        return [
            raw_id
            for (raw_id, taken), status in zip(members, statuses, strict=True)
            if (status is None and taken < settled) or (status is not None and json.loads(status) in TERMINAL)
        ]
