"""`nst api` (the HTTP server) and `nst submit` (a small client for scripts)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

GRACEFUL_SHUTDOWN_SECONDS = 3


def add_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    api = commands.add_parser(
        "api", help="run the HTTP API; NST_REDIS_URL says where Redis is", description="Run the HTTP API (uvicorn)."
    )
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
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
    submit.add_argument("-o", "--output", type=Path, default=None, help="save the result here (implies --wait)")
    submit.set_defaults(handler=run_submit)


def run_api(args: argparse.Namespace, stderr: TextIO) -> None:
    import uvicorn

    from api.log_config import uvicorn_log_config
    from api.server_protocol import PROTOCOL_PATH

    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        proxy_headers=True,
        http=PROTOCOL_PATH,  # httptools with a cap on header size and time
        log_level="info",
        log_config=uvicorn_log_config("info"),  # the same one-line records (and JSON) as the workers
        # Event streams never end by themselves: on SIGTERM wait this long, then close them.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


def run_submit(args: argparse.Namespace, stderr: TextIO) -> None:
    from api.client import submit_and_follow

    submit_and_follow(
        server=args.server,
        content=args.content,
        styles=args.styles,
        params=args.params,
        wait=args.wait or args.output is not None,
        output=args.output,
        stream=stderr,
    )
