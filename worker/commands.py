"""`nst worker` (one Celery worker process for one device) and `nst up` (everything, locally)."""

from __future__ import annotations

import argparse
import logging
from typing import TextIO

log = logging.getLogger("nst.worker")


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    worker = commands.add_parser(
        "worker",
        help="run one job worker (one per GPU); NST_REDIS_URL says where Redis is",
        description="Run a Celery worker that takes style jobs one at a time.",
    )
    worker.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: $NST_DEVICE or CUDA if available)")
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--no-banner", action="store_true", help="leave out Celery's start-up banner (nst up does)")
    worker.set_defaults(handler=run_worker)

    up = commands.add_parser(
        "up",
        help="run Redis, the workers and the API together on this machine, restarting any that exits",
        description="Start Redis (unless NST_REDIS_URL is set), the workers and the API, and keep them running: "
        "a process that exits is started again after 1, 2, 4 … 30 s. Ctrl-C or SIGTERM stops all.",
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument(
        "--data-dir",
        default=".nst",
        help="where the local Redis keeps its append-only file (redis/) and, unless NST_BLOB_STORE is set, "
        "the uploads, results and checkpoints (blobs/)",
    )
    up.add_argument(
        "--workers", type=int, default=None, help="job workers to run (default: one per visible GPU, else one)"
    )
    up.set_defaults(handler=run_up)

    from worker.doctor import add_command as add_doctor

    add_doctor(commands)


def run_worker(args: argparse.Namespace, stderr: TextIO) -> None:
    import os

    if args.device:
        os.environ["NST_DEVICE"] = args.device
    logging.getLogger().setLevel(args.loglevel.upper())
    from core.logs import log_format
    from worker.celery_logging import keep_our_logging

    keep_our_logging()
    from jobs.queue import QUEUE_NAME, get_celery_app
    from worker.context import worker_context
    from worker.device_profile import calibrate_device, speed_size
    from worker.heartbeat import start_heartbeat
    from worker.warmup import warm_up

    context = worker_context()
    try:
        adopted = context.store.adopt_queued()  # jobs an earlier version queued: into the fair queue
    except Exception as exc:  # Redis not up yet: their own messages run them meanwhile
        log.warning("could not look for jobs an earlier version queued: %s", exc)
    else:
        if adopted:
            log.info("%d queued jobs of an earlier version joined the fair queue", adopted)
    # Weights load once per process, before the first job: a bad NST_VGG_WEIGHTS stops the
    # worker here with its message instead of failing every job.
    warm_up(context.settings.device, speed_size(context.settings))
    # Then the device measures itself and serves with what it found (memory model, bf16 or fp32,
    # compiled or eager); the budget is read after, from what the measurements left free.
    context.calibration = calibrate_device(context.settings)
    profile = context.profile()  # measured now: after the network is loaded, before any job
    log.info("memory budget %d bytes on %s (%s)", profile.memory_budget_bytes, profile.device, profile.precision)
    stop = start_heartbeat(context)
    registry = context.store.worker_registry(context.settings.worker_heartbeat_seconds)
    app = get_celery_app()
    app.conf.include = ["worker.tasks"]  # the job task; the API's processes only send it
    from celery.signals import worker_ready, worker_shutting_down

    # Consuming its queue from now on: `nst up` waits for this before it says the stack is up.
    worker_ready.connect(lambda **_: registry.mark_ready(context.name), weak=False)
    # A warm shutdown waits for the running task: a batch then takes no more jobs, and ends.
    worker_shutting_down.connect(lambda **_: context.stopping.set(), weak=False)
    try:
        # The solo pool runs jobs in this process: CUDA is initialised here, never in a parent
        # that forks, and the network stays loaded between jobs.
        app.worker_main(
            [
                # Celery's banner is text on stdout, not a log record: not in a JSON log.
                *(["--quiet"] if log_format() == "json" or args.no_banner else []),
                "worker",
                "--pool=solo",
                "--concurrency=1",
                f"--queues={QUEUE_NAME}",
                f"--hostname=nst-{context.name}",
                f"--loglevel={args.loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        stop.set()
        try:
            registry.remove(context.name)
        except Exception as exc:  # Redis away: the entry ages out of the live set by itself
            log.warning("could not say this worker stopped: %s", exc)


def run_up(args: argparse.Namespace, stderr: TextIO) -> None:
    from worker.local import run_everything

    if args.workers is not None and args.workers < 1:
        raise ValueError("--workers must be at least 1")
    run_everything(host=args.host, port=args.port, data_dir=args.data_dir, stream=stderr, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.commands worker|up|doctor ...`: the commands where the package (and so
    the `nst` entry point) is not installed, as on a bare GPU machine."""
    import sys

    from core.cli import OneLineParser
    from core.logs import configure_logging

    configure_logging(logging.INFO, sys.stderr)
    parser = OneLineParser(prog="python -m worker.commands")
    add_commands(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    args.handler(args, sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
