"""Service-wide counters and histograms kept in Redis, so that one scrape of any API process covers
every worker and every API process (the API's `/metrics` reads them at scrape time, api/metrics.py).

Layout (all under `nst:metrics:`), each value a plain number Redis increments atomically:
- `nst:metrics:jobs` hash: final status -> jobs that reached it (each job counted once, where its
  final status is written);
- `nst:metrics:webhook-deliveries` hash: outcome -> delivery attempts that ended so;
- `nst:metrics:snapshots` counter: snapshots written;
- `nst:metrics:hist:{name}` hash per histogram: one field per bucket (its upper bound, as
  `RedisHistogram.field` writes it) counting the values that fell in it (not cumulative: one
  HINCRBY per observation), and `sum`. Cumulative counts and the total are derived when read.
These keys never expire: they are counters for the life of the Redis database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import redis

from jobs.keys import PREFIX, QUEUE_KEY, RUNNING_KEY, WORKER_INFO_KEY
from jobs.record import decode_value
from jobs.workers import live_range, live_reports

METRICS_PREFIX = f"{PREFIX}:metrics"
JOBS_TOTAL_KEY = f"{METRICS_PREFIX}:jobs"
WEBHOOK_DELIVERIES_KEY = f"{METRICS_PREFIX}:webhook-deliveries"
SNAPSHOTS_KEY = f"{METRICS_PREFIX}:snapshots"

FinalStatus = Literal["succeeded", "failed", "canceled"]
FINAL_STATUSES: tuple[str, ...] = get_args(FinalStatus)
WebhookOutcome = Literal["delivered", "retrying", "failed", "refused"]
WEBHOOK_OUTCOMES: tuple[str, ...] = get_args(WebhookOutcome)


class Commands:
    """Collects the counter updates as Redis commands, for a Lua script to run only if its
    change applies: a job's final status and its counters then land together or not at all."""

    def __init__(self) -> None:
        self.commands: list[list[str | int | float]] = []

    def hincrby(self, key: str, field: str, amount: int = 1) -> None:
        self.commands.append(["HINCRBY", key, field, int(amount)])

    def hincrbyfloat(self, key: str, field: str, amount: float) -> None:
        self.commands.append(["HINCRBYFLOAT", key, field, repr(float(amount))])

    def incr(self, key: str) -> None:
        self.commands.append(["INCR", key])

    def expire(self, key: str, seconds: int) -> None:
        self.commands.append(["EXPIRE", key, int(seconds)])


# A client, a pipeline or Commands: each takes the same calls, a pipeline and Commands only later.
Writer = redis.Redis | redis.client.Pipeline | Commands

_SUM_FIELD = "sum"


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram as read: cumulative counts per upper bound (the last is +Inf), and the sum."""

    buckets: list[tuple[float, int]]
    sum: float

    @property
    def count(self) -> int:
        return self.buckets[-1][1] if self.buckets else 0


class RedisHistogram:
    """A Prometheus-style histogram whose state is a Redis hash, shared by every process."""

    def __init__(self, name: str, bounds: Sequence[float]) -> None:
        ordered = sorted(float(b) for b in bounds if not math.isinf(b))
        if not ordered or len(set(ordered)) != len(ordered):
            raise ValueError("a histogram needs distinct finite bucket bounds")
        self.name = name
        self.key = f"{METRICS_PREFIX}:hist:{name}"
        self.bounds: tuple[float, ...] = (*ordered, math.inf)

    @staticmethod
    def field(bound: float) -> str:
        return "+Inf" if math.isinf(bound) else repr(float(bound))

    def bucket_of(self, value: float) -> float:
        """The smallest upper bound that holds `value` (Prometheus buckets are `le`, inclusive)."""
        return next(bound for bound in self.bounds if value <= bound)

    def observe(self, writer: Writer, value: float) -> None:
        """Count one value: two increments, atomic each; inside a MULTI pipeline, atomic together."""
        value = max(0.0, float(value))
        writer.hincrby(self.key, self.field(self.bucket_of(value)), 1)
        writer.hincrbyfloat(self.key, _SUM_FIELD, value)

    def parse(self, fields: Mapping[bytes | str, bytes | str]) -> HistogramSnapshot:
        """Cumulative buckets from the hash as HGETALL returns it (fields this layout no longer
        has, from other bounds, are ignored)."""
        raw = {_text(name): _text(value) for name, value in fields.items()}
        running = 0
        buckets = []
        for bound in self.bounds:
            running += int(raw.get(self.field(bound), 0))
            buckets.append((bound, running))
        return HistogramSnapshot(buckets=buckets, sum=float(raw.get(_SUM_FIELD, 0.0)))

    def read(self, client: redis.Redis) -> HistogramSnapshot:
        return self.parse(client.hgetall(self.key))


# From a 32x32 test run (about a second) to long GPU jobs; queue waits from none to an hour.
JOB_RUN_SECONDS = RedisHistogram("job-run-seconds", [1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200])
JOB_QUEUE_WAIT_SECONDS = RedisHistogram(
    "job-queue-wait-seconds", [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def seconds_since(stamp: bytes | str | None, now: datetime | None = None) -> float | None:
    """Seconds from a job field's timestamp (as stored: a JSON string, `utc_now()`'s format) to
    `now`; None when there is none or it does not parse."""
    if stamp is None:
        return None
    try:
        value = decode_value(stamp)
        then = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None
    if then is None:
        return None
    return max(0.0, ((now or datetime.now(UTC)) - then).total_seconds())


def record_webhook_delivery(client: redis.Redis, outcome: str) -> None:
    """One webhook delivery attempt ended: 'delivered', 'retrying' (failed, will be tried again),
    'failed' (given up) or 'refused' (the URL was not allowed at delivery)."""
    if outcome not in WEBHOOK_OUTCOMES:
        raise ValueError(f"unknown webhook outcome {outcome!r}; one of {WEBHOOK_OUTCOMES}")
    client.hincrby(WEBHOOK_DELIVERIES_KEY, outcome, 1)


def record_job_final(writer: Writer, status: str, run_seconds: float | None = None) -> None:
    """A job reached its final status (call once per job, where the transition succeeded);
    `run_seconds`, when the job ran, goes into the run time histogram."""
    if status not in FINAL_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    writer.hincrby(JOBS_TOTAL_KEY, status, 1)
    if run_seconds is not None:
        JOB_RUN_SECONDS.observe(writer, run_seconds)


def record_job_started(writer: Writer, queue_wait_seconds: float) -> None:
    """A job left the queue for its first run, after waiting this long."""
    JOB_QUEUE_WAIT_SECONDS.observe(writer, queue_wait_seconds)


def record_snapshot(writer: Writer) -> None:
    writer.incr(SNAPSHOTS_KEY)


@dataclass(frozen=True)
class Totals:
    """Everything the counters hold, read in one round trip."""

    jobs: dict[str, int]
    webhook_deliveries: dict[str, int]
    snapshots: int
    run_seconds: HistogramSnapshot
    queue_wait_seconds: HistogramSnapshot


def queue_totals_reads(pipe: redis.client.Pipeline) -> None:
    """Queue the reads `parse_totals` expects, in its order (sync or async pipeline alike)."""
    pipe.hgetall(JOBS_TOTAL_KEY)
    pipe.hgetall(WEBHOOK_DELIVERIES_KEY)
    pipe.get(SNAPSHOTS_KEY)
    pipe.hgetall(JOB_RUN_SECONDS.key)
    pipe.hgetall(JOB_QUEUE_WAIT_SECONDS.key)


def parse_totals(results: Sequence[object]) -> Totals:
    jobs, deliveries, snapshots, run, wait = results
    assert isinstance(jobs, dict) and isinstance(deliveries, dict) and isinstance(run, dict) and isinstance(wait, dict)
    counts = {_text(k): int(v) for k, v in jobs.items()}
    outcomes = {_text(k): int(v) for k, v in deliveries.items()}
    return Totals(
        jobs={status: counts.get(status, 0) for status in FINAL_STATUSES},
        webhook_deliveries={outcome: outcomes.get(outcome, 0) for outcome in WEBHOOK_OUTCOMES},
        snapshots=int(snapshots or 0),  # type: ignore[call-overload]
        run_seconds=JOB_RUN_SECONDS.parse(run),
        queue_wait_seconds=JOB_QUEUE_WAIT_SECONDS.parse(wait),
    )


def read_totals(client: redis.Redis) -> Totals:
    pipe = client.pipeline(transaction=False)
    queue_totals_reads(pipe)
    return parse_totals(pipe.execute())


@dataclass(frozen=True)
class ClusterState:
    """What Redis says about the whole service at one moment."""

    queue_depth: int
    running: int
    workers: dict[str, dict[str, Any]]  # live worker -> its last report ({} if it reported nothing)
    totals: Totals


def read_cluster(client: redis.Redis, heartbeat_seconds: float) -> ClusterState:
    """Everything in one round trip (a pipeline, not a transaction: counters move on anyway)."""
    pipe = client.pipeline(transaction=False)
    pipe.zcard(QUEUE_KEY)
    pipe.scard(RUNNING_KEY)
    pipe.zrangebyscore(*live_range(heartbeat_seconds))
    pipe.hgetall(WORKER_INFO_KEY)
    queue_totals_reads(pipe)
    queued, running, alive, reports, *totals = pipe.execute()
    workers = live_reports(alive, reports)
    return ClusterState(int(queued), int(running), workers, parse_totals(totals))
