"""When a running job must stop: a cancel, losing its claim to another run, or its time limit."""

from __future__ import annotations

import time

from jobs.store import JobStore
from worker.redis_retry import best_effort

CHECK_SECONDS = 0.2  # a running job sees a cancel (or losing its claim) within this


class StopCheck:
    """`should_stop` for core: a cancel, losing the claim, or the time limit. Redis is read at
    most every 0.2 s, in one round trip."""

    def __init__(self, store: JobStore, job_id: str, run_token: str, timeout_seconds: float) -> None:
        self.store = store
        self.job_id = job_id
        self.run_token = run_token
        self.deadline = time.monotonic() + timeout_seconds
        self.next_check = 0.0
        self.canceled = False
        self.superseded = False
        self.timed_out = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if now >= self.deadline:
            self.timed_out = True
            return True
        if now >= self.next_check:
            self.next_check = now + CHECK_SECONDS
            state = best_effort("cancel check", lambda: self.store.run_state(self.job_id))
            if state is not None:
                status, token, canceled = state
                self.superseded = status != "running" or token != self.run_token
                self.canceled = canceled
        return self.canceled or self.superseded
