"""What clients see of a running job: its progress, losses, ETA and snapshots, stored in Redis
with an event each (the writing itself runs on worker.progress_writer's thread)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from core.memory import MemoryEstimate
from core.output import encode_image
from core.transfer import Progress
from jobs.record import JobRecord, history_line
from jobs.store import JobStore
from jobs.webhooks import announce
from worker.progress_writer import OrderedWriter
from worker.redis_retry import best_effort

PROGRESS_WRITE_SECONDS = 0.5  # between snapshots, progress is written at most this often
JPEG_QUALITY = 88
# A test hook: seconds the progress writer sleeps before each write (a slow Redis, a big image).
WRITE_DELAY_ENV = "NST_TEST_WRITE_DELAY_SECONDS"


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity (a diverged optimisation produces them): null instead."""
    return value if value is not None and math.isfinite(value) else None


def finite_values(values: dict[str, float]) -> dict[str, float | None]:
    return {name: finite_or_none(value) for name, value in values.items()}


class ProgressPublisher:
    """`on_progress` for core: snapshots as JPEGs, progress, losses and ETA, into Redis with an
    event each and a line of loss history. What clients see never goes backwards, also when a
    resumed run repeats iterations.

    The loop's thread only decides whether a report is written and hands it over; a writer thread
    (worker.progress_writer) renders, encodes and stores it, in order. `close` waits for it."""

    def __init__(
        self,
        store: JobStore,
        record: JobRecord,
        weights: str,
        run_token: str,
        memory: MemoryEstimate,
        *,
        snapshot_max_side: int | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.memory = memory
        self.job_id = record.id
        self.run_token = run_token
        self.total = record.total
        self.snapshots = sorted(record.snapshots)
        self.shown_iteration = record.iteration
        self.weights = weights
        self.snapshot_max_side = snapshot_max_side
        self.stop = stop
        self.last_handed = 0.0
        self.write_delay = float(os.environ.get(WRITE_DELAY_ENV) or 0)
        self.writer = OrderedWriter(self.write, name=f"nst-progress-{record.id[:8]}")

    def __call__(self, progress: Progress) -> None:
        """On the loop's thread: at most a queue put."""
        now = time.monotonic()
        last = progress.iteration >= self.total  # the history and the watchers get the last point too
        if not progress.is_snapshot and not last and now - self.last_handed < PROGRESS_WRITE_SECONDS:
            return  # nothing read: the loop runs on
        self.last_handed = now
        self.writer.submit(progress, abandon=self.stop)

    def close(self, drain: bool) -> None:
        """Every report handed over is stored (`drain`), or those not yet begun are dropped."""
        self.writer.close(drain)

    def write(self, progress: Progress) -> None:
        """On the writer's thread, one report at a time in iteration order."""
        if self.write_delay:
            time.sleep(self.write_delay)  # the tests' slow writer
        advanced = progress.iteration > self.shown_iteration
        self.shown_iteration = max(self.shown_iteration, progress.iteration)
        losses = finite_values(progress.losses.public())
        fields: dict[str, object] = {
            "iteration": self.shown_iteration,
            "losses": losses,
            "iterations_per_second": finite_or_none(progress.iterations_per_second),
            "eta_seconds": finite_or_none(progress.eta_seconds),
            "scale": {
                "index": progress.stage,
                "count": progress.stages,
                "height": progress.stage_size[0],
                "width": progress.stage_size[1],
            },
            "checkpointing": self.memory.checkpointing,
            "memory_bytes": self.memory.bytes,
        }
        event = {**fields, "total": self.total}
        # A resumed run repeats iterations: the history keeps only the first run's point for each
        # (and no point of a run that diverged: a chart has no place for NaN).
        diverged = None in losses.values()
        history = history_line(progress.iteration, progress.losses.public()) if advanced and not diverged else None
        snapshot = None
        if progress.is_snapshot:
            metadata = {
                "weights": self.weights,
                "iteration": str(progress.iteration),
                "checkpointing": str(self.memory.checkpointing).lower(),
            }
            image = progress.image(self.snapshot_max_side)
            snapshot = (progress.iteration, encode_image(image, "JPEG", metadata, JPEG_QUALITY))
            if progress.iteration not in self.snapshots:
                self.snapshots = sorted([*self.snapshots, progress.iteration])
            fields["snapshots"] = self.snapshots
        written = best_effort(
            "progress",
            lambda: self.store.publish(self.job_id, self.run_token, fields, event, snapshot=snapshot, history=history),
        )  # False when this run no longer holds the job: its StopCheck ends it within CHECK_SECONDS
        if snapshot is not None and written:
            announce(self.store, self.job_id, "snapshot")  # at most one per NST_WEBHOOK_SNAPSHOT_INTERVAL_SECONDS
