"""The writer thread that takes snapshots and progress off the optimisation loop."""

from __future__ import annotations

import threading
import time

from worker.progress_writer import OrderedWriter


class GatedWrites:
    """A write that records its items and can be held at a gate, like a slow Redis."""

    def __init__(self) -> None:
        self.done: list[int] = []
        self.started = threading.Event()
        self.gate = threading.Event()

    def __call__(self, item: int) -> None:
        self.started.set()
        self.gate.wait(10)
        self.done.append(item)


def test_items_are_written_in_order_and_the_loop_waits_only_past_the_bound() -> None:
    writes = GatedWrites()
    writer = OrderedWriter(writes, bound=3)
    writer.submit(0)
    assert writes.started.wait(5)  # item 0 is being written, and held there
    start = time.perf_counter()
    for item in (1, 2, 3):  # three more wait in the queue: the loop goes on at once
        assert writer.submit(item)
    assert writer.waits == 0 and time.perf_counter() - start < 0.5
    # The fourth behind: the loop waits, and gives the item up if it is stopping meanwhile.
    assert writer.submit(4, abandon=lambda: True) is False
    assert writer.waits == 1
    threading.Timer(0.3, writes.gate.set).start()
    begun = time.perf_counter()
    assert writer.submit(5)  # waits until the writer takes one
    assert time.perf_counter() - begun >= 0.2 and writer.waits == 2
    writer.close(drain=True)
    assert writes.done == [0, 1, 2, 3, 5]


def test_closing_without_draining_drops_what_has_not_begun_and_finishes_what_has() -> None:
    writes = GatedWrites()
    writer = OrderedWriter(writes, bound=4)
    for item in range(4):
        writer.submit(item)
    assert writes.started.wait(5)
    threading.Timer(0.2, writes.gate.set).start()
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
