"""The writer thread that takes snapshots and progress off the optimisation loop."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from worker.progress_writer import OrderedWriter

HANG = 60  # seconds: only a hang waits this long for one of these threads


class GatedWrites:
    """A write that records its items and can be held at a gate, like a slow Redis."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, item: int) -> None:
        self.started.set()
        self.gate.wait(HANG)
        self.done.append(item)

    def open_when(self, condition: Callable[[], bool]) -> threading.Thread:
        """Open the gate, from another thread, once `condition` holds (what the test waits for)."""

        def watch() -> None:
            deadline = time.monotonic() + HANG
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.005)
            self.gate.set()

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        return thread


def test_items_are_written_in_order_and_the_loop_waits_only_past_the_bound() -> None:
    writes = GatedWrites()
    writer = OrderedWriter(writes, bound=3)
    writer.submit(0)
    assert writes.started.wait(HANG)  # item 0 is being written, and held there
    for item in (1, 2, 3):  # three more wait in the queue: the loop goes on at once
        assert writer.submit(item)
    assert writer.waits == 0  # it never waited for the writer
    # The fourth behind: the loop waits, and gives the item up if it is stopping meanwhile.
    assert writer.submit(4, abandon=lambda: True) is False
    assert writer.waits == 1
    # The gate opens only once the next submit is waiting: it returns after the writer took one.
    writes.open_when(lambda: writer.waits == 2)
    assert writer.submit(5)
    assert writes.gate.is_set() and writer.waits == 2
    writer.close(drain=True)
    assert writes.done == [0, 1, 2, 3, 5]


def test_closing_without_draining_drops_what_has_not_begun_and_finishes_what_has() -> None:
    writes = GatedWrites()
    writer = OrderedWriter(writes, bound=4)
    for item in range(4):
        writer.submit(item)
    assert writes.started.wait(HANG)
    # The write under way completes only once close() has begun dropping the rest.
    writes.open_when(writer._dropping.is_set)
    writer.close(drain=False)
    assert writes.done == [0]  # the one under way completed; the rest were dropped


def test_a_failing_write_does_not_stop_the_ones_after_it() -> None:
    done: list[int] = []

    def write(item: int) -> None:
        if item == 1:
            raise RuntimeError("boom")
        done.append(item)

    writer = OrderedWriter(write)
    for item in range(3):
        writer.submit(item)
    writer.close()
    assert done == [0, 2] and writer.written == 2
