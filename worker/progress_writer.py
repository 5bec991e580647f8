"""A job's progress and snapshots, written off the optimisation loop's thread, in order.

The loop hands each report over and goes on; one thread per job renders, encodes and writes them
to Redis in iteration order. The hand-over is bounded: when the writer is more than `bound`
reports behind, the loop waits for it rather than drop a snapshot or let memory grow.
"""

from __future__ import annotations

import contextvars
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
BOUND = 4  # reports waiting beside the one being written
ABANDON_CHECK_SECONDS = 0.05


class _Stop:
    pass


_STOP = _Stop()


class OrderedWriter(Generic[T]):
    """`submit` from the loop's thread, `write` on the writer's, one item at a time, in order."""

    def __init__(self, write: Callable[[T], None], bound: int = BOUND, name: str = "nst-writer") -> None:
        self._write = write
        self._queue: queue.Queue[T | _Stop] = queue.Queue(maxsize=bound)
        self._dropping = threading.Event()
        self.waits = 0  # how many times the loop had to wait for the writer
        self.waited_seconds = 0.0
        self.written = 0
        self.busy_seconds = 0.0  # CPU time the writer's thread spent writing (thread_time)
        # In a copy of the caller's context: the writer's log records carry the job id too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), name=name, daemon=True
        )
        self._thread.start()

    def submit(self, item: T, abandon: Callable[[], bool] | None = None) -> bool:
        """Queue `item`; waits only while `bound` items are already waiting. While it waits it
        asks `abandon` (a cancel, a lost claim, the time limit) and gives the item up if so, so
        that a stopping run is not held up behind a slow writer. False if it gave it up."""
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            pass
        start = time.perf_counter()
        self.waits += 1
        try:
            while True:
                try:
                    self._queue.put(item, timeout=ABANDON_CHECK_SECONDS)
                    return True
                except queue.Full:
                    if abandon is not None and abandon():
                        return False
        finally:
            self.waited_seconds += time.perf_counter() - start

    def close(self, drain: bool = True) -> None:
        """Wait until every item is written (`drain`), or drop the ones not yet started: a
        canceled job's run stops without writing more, and the write under way completes
        (each is one Redis transaction, so nothing is left half-written)."""
        if not drain:
            self._dropping.set()
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        self._queue.put(_STOP)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                return
            if self._dropping.is_set():
                continue
            began = time.thread_time()
            try:
                self._write(item)
                self.written += 1
            except Exception:  # a bad report must not stop the ones after it, nor the job
                log.exception("progress write failed")
            finally:
                self.busy_seconds += time.thread_time() - began
