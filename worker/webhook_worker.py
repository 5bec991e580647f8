"""`nst webhooks`: the Celery worker that delivers webhooks, apart from the GPU workers.

A GPU worker runs jobs in a solo pool: while it runs one it takes no other task, and a delivery
waiting behind a job would wait hours. This worker consumes only the webhook queue, with a pool
of threads (deliveries wait on the network, not the CPU). It imports neither torch nor the job
runner, so it runs from the API's image as well as the worker's. Run one or more anywhere that
reaches Redis; with none, deliveries wait in the queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from typing import TextIO

DEFAULT_CONCURRENCY = 8


def add_webhook_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    webhooks = commands.add_parser(
        "webhooks",
        help="deliver webhooks (a light worker on the nst-webhooks queue: no GPU, no torch)",
        description="Run a Celery worker with a thread pool that delivers the webhooks jobs asked for.",
    )
    webhooks.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="deliveries at once")
    webhooks.add_argument("--loglevel", default="INFO")
    webhooks.add_argument("--no-banner", action="store_true", help="leave out Celery's start-up banner (nst up does)")
    webhooks.set_defaults(handler=run_webhook_worker)


def run_webhook_worker(args: argparse.Namespace, stderr: TextIO) -> None:
    if args.concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    logging.getLogger().setLevel(args.loglevel.upper())
    # httpx logs every request with its whole URL, whose query may hold the receiver's token;
    # jobs.webhooks logs each attempt with the host alone.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from core.logs import log_format
    from jobs.queue import make_celery_app
    from jobs.settings import get_settings
    from jobs.webhooks import WEBHOOK_QUEUE
    from worker.celery_logging import keep_our_logging

    keep_our_logging()
    settings = get_settings()
    app = make_celery_app(settings)
    from celery.signals import worker_ready

    from jobs.store import JobStore
    from jobs.workers import webhook_worker_name

    store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    name = webhook_worker_name(socket.gethostname(), os.getpid())
    worker_ready.connect(
        lambda **_: store.worker_registry(settings.worker_heartbeat_seconds).mark_ready(name), weak=False
    )  # `nst up` waits for it
    # Only the delivery task: the job task's module imports torch, which this worker neither
    # needs nor (in the API's image) has.
    app.conf.include = ["worker.webhook_tasks"]
    app.worker_main(
        [
            *(["--quiet"] if log_format() == "json" or args.no_banner else []),  # the banner is not a record
            "worker",
            "--pool=threads",
            f"--concurrency={args.concurrency}",
            f"--queues={WEBHOOK_QUEUE}",
            f"--hostname=nst-webhooks-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
