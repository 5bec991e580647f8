"""The worker's background thread: it says the worker is alive, renews the leases of the jobs it
runs, requeues jobs whose worker died (any live worker does this for all), and starts the blob
store's sweep when it is this worker's turn (worker/sweeper.py)."""

from __future__ import annotations

import logging
import threading

from jobs.queue import get_celery_app, send_turn
from jobs.webhooks import announce
from worker.context import WorkerContext
from worker.sweeper import start_sweep

log = logging.getLogger(__name__)


def beat_once(context: WorkerContext) -> None:
    store, settings = context.store, context.settings
    store.worker_registry(settings.worker_heartbeat_seconds).heartbeat(context.name, context.report())
    with context.lock:
        running = list(context.running.items())
    for job_id, token in running:
        if not store.renew_lease(job_id, token, settings.lease_seconds):
            log.warning("job %s: lease lost; the run will stop at its next check", job_id)
    for job_id, outcome in store.reap(settings.max_attempts):
        if outcome == "requeued":
            log.warning("job %s: its worker stopped answering; queued again", job_id)
            send_turn(get_celery_app(), job_id)
        else:
            log.warning("job %s: its worker stopped %d times; failed", job_id, settings.max_attempts)
            store.refresh_expiry(job_id)  # kept NST_JOB_TTL_SECONDS from its end, as every ended job
            announce(store, job_id, "completed", settings=settings)


def run_heartbeat(context: WorkerContext, stop: threading.Event) -> None:
    sweeping: threading.Thread | None = None
    while not stop.is_set():
        try:
            beat_once(context)
        except Exception as exc:  # Redis away, broker away: say so, keep trying
            log.warning("heartbeat failed: %s", exc)
        sweeping = start_sweep(context, sweeping)  # never raises; the sweep runs on its own thread
        stop.wait(context.settings.worker_heartbeat_seconds)


def start_heartbeat(context: WorkerContext) -> threading.Event:
    """Start the thread; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(target=run_heartbeat, args=(context, stop), name="nst-heartbeat", daemon=True).start()
    return stop
