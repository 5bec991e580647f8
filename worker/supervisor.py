"""`nst up`'s children, kept running: one that exits unexpectedly is started again after a
back-off (1, 2, 4 … 30 s), while the others keep serving; a signal stops them all."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO

log = logging.getLogger("nst.up")

MAX_BACKOFF_SECONDS = 30.0
# A child that ran this long before it exited was healthy: its next restart waits 1 s again.
STABLE_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1
TAIL_LINES = 40


def exit_reason(returncode: int) -> str:
    """'status 1', or 'signal SIGKILL' for a child a signal ended (Popen's negative codes)."""
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def backoff_seconds(failures: int) -> float:
    """1, 2, 4 … 30 seconds for the 1st, 2nd, 3rd … restart in a row."""
    return min(MAX_BACKOFF_SECONDS, 2.0 ** max(0, failures - 1))


def die_with_parent(death_signal: signal.Signals) -> Callable[[], None]:
    """What the child runs before exec: Linux sends it `death_signal` when `nst up` dies, even by
    SIGKILL. (It fires when the thread that started the child ends: the supervisor starts every
    child from its main thread, which lives as long as `nst up`.)"""

    def in_child() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(death_signal))

    return in_child


@dataclass
class Child:
    """One supervised program: its command, its current process and its restart history."""

    name: str
    command: list[str]
    env: dict[str, str]
    stop_order: int = 0  # stop_all stops lower numbers first, equal numbers together
    # What the child gets if `nst up` dies without stopping it. SIGTERM lets Redis and the API end
    # cleanly in a moment; a Celery worker answers SIGTERM with a warm shutdown that waits for
    # its running job (minutes, with no Redis to report to), so workers get SIGKILL: their job's
    # lease lapses and it resumes from its checkpoint once the stack is back.
    death_signal: signal.Signals = signal.SIGTERM
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row, each after less than STABLE_SECONDS
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of the pending restart, if one is pending
    history: list[str] = field(default_factory=list)
    # Its last lines of output, so that a child that fails to start can be told why, last.
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    output: IO[str] | None = None  # where its output goes on to (None: nst up's stderr)
    _pump_thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, now: float) -> None:
        # A process group of its own: the terminal's Ctrl-C reaches `nst up` alone, which then
        # stops the children in order (API, workers, Redis) instead of all at once. Its output
        # comes through `nst up`, a line at a time, into nst up's stderr and its tail.
        self.process = subprocess.Popen(
            self.command, env=self.env, preexec_fn=die_with_parent(self.death_signal), process_group=0,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.started_at = now
        self.restart_at = None
        pipe = self.process.stdout
        assert pipe is not None
        self._pump_thread = threading.Thread(target=self._pump, args=(pipe,), name=f"out-{self.name}", daemon=True)
        self._pump_thread.start()

    def wait_for_output(self, timeout: float = 10) -> None:
        """After it exited: until its last words have come through (they say why)."""
        if self._pump_thread is not None:
            self._pump_thread.join(timeout)

    def _pump(self, pipe: IO[bytes]) -> None:
        """Copy the child's output on as it comes, keeping its last lines."""
        with pipe:
            for raw in pipe:
                line = raw.decode(errors="replace")
                self.tail.append(line.rstrip("\n"))
                out = self.output or sys.stderr
                with contextlib.suppress(OSError, ValueError):  # our own stderr gone: keep reading
                    out.write(line)
                    out.flush()

    def reason(self) -> str:
        """Why it stopped, from its own words: its last error line, else its last lines."""
        errors = [line for line in self.tail if line.startswith(("nst: error:", "Error:")) or "Error" in line[:40]]
        lines = errors[-1:] if errors else list(self.tail)[-5:]
        return "\n".join("  " + line.removeprefix("nst: error: ") for line in lines)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts the children, restarts any that exits, and stops them all (in order) on request."""

    def __init__(self, children: Sequence[Child], clock: Callable[[], float] = time.monotonic) -> None:
        self.children = list(children)
        self.clock = clock
        self.stopping = False

    def start_all(self) -> None:
        for child in self.children:
            if child.process is None:
                child.start(self.clock())

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        return [child.process for child in self.children if child.process is not None]

    def check(self) -> None:
        """One round: note children that exited, and start those whose back-off has passed."""
        now = self.clock()
        for child in self.children:
            if child.restart_at is None and child.process is not None and child.process.poll() is not None:
                ran_for = now - child.started_at
                child.failures = 1 if ran_for >= STABLE_SECONDS else child.failures + 1
                delay = backoff_seconds(child.failures)
                child.restart_at = now + delay
                reason = exit_reason(child.process.returncode)
                child.history.append(reason)
                log.warning(
                    "%s exited with %s after %.0f s; starting it again in %.0f s", child.name, reason, ran_for, delay
                )
            if child.restart_at is not None and now >= child.restart_at and not self.stopping:
                child.restarts += 1
                child.start(now)
                log.warning("%s started again (restart %d, pid %d)", child.name, child.restarts, child.process.pid)  # type: ignore[union-attr]

    def run_until_signalled(self, poll_seconds: float = 0.2) -> None:
        def on_signal(signum: int, frame: object) -> None:
            self.stopping = True

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not self.stopping:
                self.check()
                time.sleep(poll_seconds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_all(self, grace: float = 15) -> None:
        """SIGTERM the children by stop_order (the API first, so nothing new arrives; Redis last,
        so the workers can store their state), those of one order together; SIGKILL whatever is
        still there `grace` seconds after its SIGTERM."""
        self.stopping = True
        for order in sorted({child.stop_order for child in self.children}):
            batch = [c for c in self.children if c.stop_order == order and c.process is not None]
            running = [c for c in batch if c.process.poll() is None]  # type: ignore[union-attr]
            for child in running:
                child.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            deadline = time.monotonic() + grace
            for child in running:
                process = child.process
                assert process is not None
                try:
                    process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s; killing it", child.name, grace)
                    process.kill()
                    process.wait()


def visible_gpu_count() -> int:
    """GPUs this machine's workers could use; 0 without CUDA (or without torch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
