"""How many pixels one API process decodes at once (NST_MAX_DECODE_PIXELS).

Every upload is decoded once at submit, to refuse what the worker could not read. A small file
can hold a large picture (an 80 KB PNG of 40 Mpx): a few such uploads at once would take the
process's memory. Each decode takes its pixels from this budget first, waits while the budget
is spent, and is refused (503 with Retry-After) if it cannot start within NST_DECODE_WAIT_SECONDS.
What a decode freed goes back to the system when it ends, not into the allocator's free lists.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
import threading
from collections.abc import Iterator
from functools import lru_cache

from api.problems import Problem

log = logging.getLogger(__name__)

BUSY_RETRY_AFTER_SECONDS = 5


class PixelBudget:
    """A counting semaphore over pixels, shared by the threads that check uploads."""

    def __init__(self, capacity: int, wait_seconds: float) -> None:
        self.capacity = capacity
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Hold `pixels` (at most the whole budget) while the block runs, or raise a 503 Problem."""
        wanted = min(pixels, self.capacity)
        with self._changed:
            if not self._changed.wait_for(lambda: self.in_use + wanted <= self.capacity, timeout=self.wait_seconds):
                raise Problem(
                    "busy",
                    f"this server is decoding as many pixels as it may at once ({self.capacity}); try again shortly",
                    headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
                )
            self.in_use += wanted
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= wanted
                self._changed.notify_all()
            release_freed_memory()


@lru_cache(maxsize=1)
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


def release_freed_memory() -> None:
    """Hand the memory a decode freed back to the system. glibc keeps freed blocks of a few MB in
    its heaps for reuse (its mmap threshold rises after each large free), so without this the
    process stays as large as its largest decode."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
