"""`nst api` (the HTTP server) and `nst submit` (a small client for scripts)."""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import TextIO

GRACEFUL_SHUTDOWN_SECONDS = 3
# uvicorn kills a process that does not answer its supervisor's ping in this time (its own
# default, 5 s, kills healthy processes on a machine loaded twenty-fold, uploads in flight).
HEALTHCHECK_SECONDS = 60


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    api = commands.add_parser(
        "api", help="run the HTTP API; NST_REDIS_URL says where Redis is", description="Run the HTTP API (uvicorn)."
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument(
        "--workers",
        type=int,
        default=None,
        help="API processes, all serving the one port (default: NST_API_PROCESSES, else one per CPU core)",
    )
    api.set_defaults(handler=run_api)

    submit = commands.add_parser(
        "submit",
        help="submit a job to a running service and optionally wait for it",
        description="Submit CONTENT with STYLE(s) to the service at --server.",
    )
    submit.add_argument("content", type=Path, metavar="CONTENT")
    submit.add_argument("styles", type=Path, nargs="+", metavar="STYLE")
    submit.add_argument("--server", default="http://127.0.0.1:8000", help="the API; NST_API_KEY is sent as its key")
    submit.add_argument("--params", default=None, help="JSON object, e.g. '{\"iterations\": 500}'")
    submit.add_argument("--wait", action="store_true", help="poll until the job ends, with a progress bar")
    submit.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="save the result (a sweep: its contact sheet) here; implies --wait",
    )
    submit.add_argument(
        "--grid",
        default=None,
        help="a sweep: JSON object of up to two parameters and the values to try, e.g. "
        "'{\"style_weight\": [100, 1000]}'; one job per combination (POST /sweeps)",
    )
    submit.add_argument("--each-style", action="store_true", help="a sweep: try the style images one by one")
    submit.set_defaults(handler=run_submit)


def api_processes(given: int | None) -> int:
    """--workers, else NST_API_PROCESSES, else the CPU cores this process may run on."""
    from jobs.settings import Settings

    if given is not None:
        if given < 1:
            raise ValueError("--workers must be at least 1")
        return given
    configured = Settings().api_processes
    if configured is not None:
        return configured
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_api(args: argparse.Namespace, stderr: TextIO) -> None:
    import uvicorn

    from api.log_config import uvicorn_log_config
    from api.metrics import MULTIPROCESS_DIR_VARIABLE
    from api.server_protocol import PROTOCOL_PATH

    processes = api_processes(args.workers)
    own_dir = None
    if processes > 1 and MULTIPROCESS_DIR_VARIABLE not in os.environ:
        # Several processes answer on one port, and a scrape reaches any one of them: each counts
        # its HTTP metrics into files here, and a scrape sums them all (api/metrics.py). A fresh,
        # empty directory each start, so no count of an earlier run is summed in.
        own_dir = tempfile.mkdtemp(prefix="nst-api-metrics-")
        os.environ[MULTIPROCESS_DIR_VARIABLE] = own_dir  # the processes uvicorn spawns inherit it
    try:
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=processes,  # above 1: uvicorn's supervisor spawns them and restarts one that dies
            proxy_headers=True,
            http=PROTOCOL_PATH,  # httptools with a cap on header size and time
            log_level="info",
            log_config=uvicorn_log_config("info"),  # the same one-line records (and JSON) as the workers
            # Event streams never end by themselves: on SIGTERM wait this long, then close them.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            timeout_worker_healthcheck=HEALTHCHECK_SECONDS,
        )
    finally:
        if own_dir is not None:
            os.environ.pop(MULTIPROCESS_DIR_VARIABLE, None)
            shutil.rmtree(own_dir, ignore_errors=True)


def run_submit(args: argparse.Namespace, stderr: TextIO) -> None:
    from api.client import submit_and_follow, submit_sweep_and_follow

    if args.grid is not None or args.each_style:
        submit_sweep_and_follow(
            server=args.server,
            content=args.content,
            styles=args.styles,
            params=args.params,
            grid=args.grid,
            each_style=args.each_style,
            wait=args.wait or args.output is not None,
            output=args.output,
            stream=stderr,
        )
        return
    submit_and_follow(
        server=args.server,
        content=args.content,
        styles=args.styles,
        params=args.params,
        wait=args.wait or args.output is not None,
        output=args.output,
        stream=stderr,
    )
