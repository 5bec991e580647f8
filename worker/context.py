"""The state one worker process shares between its job loop and its heartbeat thread."""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from functools import lru_cache

from core.calibration import DeviceCalibration
from jobs.blobs import BlobStore
from jobs.settings import Settings, get_settings
from jobs.store import JobStore
from jobs.workers import worker_name
from worker.device_profile import DeviceProfile, measure_profile


@dataclass
class WorkerContext:
    settings: Settings
    store: JobStore
    name: str
    # The jobs this process runs now (several in a batch), job id -> run token; the heartbeat
    # renews their leases.
    running: dict[str, str] = field(default_factory=dict)
    # Set when the worker is asked to stop (Celery's warm shutdown): a batch takes no more jobs.
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _profile: DeviceProfile | None = None
    # The latest rate a job of this process reported (set on the loop's thread, read by the heartbeat's).
    last_iterations_per_second: float | None = None
    # Inputs, results and checkpoints of the jobs written by this version (NST_BLOB_STORE); made
    # from the settings on first use unless given.
    blob_store: BlobStore | None = None

    @property
    def blobs(self) -> BlobStore:
        with self.lock:
            if self.blob_store is None:
                self.blob_store = BlobStore(self.settings.blob_store, self.settings.blob_min_free_bytes)
            return self.blob_store

    # What the worker measured of its device at start (worker.device_profile.calibrate_device).
    calibration: DeviceCalibration | None = None

    def profile(self) -> DeviceProfile:
        with self.lock:
            if self._profile is None:
                self._profile = measure_profile(self.settings, self.calibration)
            return self._profile

    def report(self) -> dict[str, object]:
        """What the heartbeat says: the profile and, once a job has run, its latest iterations per second."""
        report = self.profile().report()
        if self.last_iterations_per_second is not None:
            report["iterations_per_second"] = self.last_iterations_per_second
        return report


@lru_cache(maxsize=1)
def worker_context() -> WorkerContext:
    settings = get_settings()
    store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    # Made now: a wrong NST_BLOB_STORE stops the worker as it starts, not its first job.
    blobs = BlobStore(settings.blob_store, settings.blob_min_free_bytes)
    return WorkerContext(settings, store, worker_name(socket.gethostname(), os.getpid()), blob_store=blobs)
