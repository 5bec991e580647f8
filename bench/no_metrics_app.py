"""The API without its HTTP metrics middleware, for bench/polling.py to show what the middleware
costs a poll. Everything else is `nst api`'s: the same app, uvicorn settings and log records.

NST_REDIS_URL=redis://127.0.0.1:6379/0 python -m bench.no_metrics_app PORT
"""

from __future__ import annotations

import sys

from fastapi import FastAPI

from api.app import create_app as create_full_app
from api.metrics import HttpMetricsMiddleware


def create_app() -> FastAPI:
    app = create_full_app()
    # The middleware stack is built at the first request, from this list.
    app.user_middleware = [m for m in app.user_middleware if m.cls is not HttpMetricsMiddleware]
    return app


if __name__ == "__main__":
    import uvicorn

    from api.log_config import uvicorn_log_config

    uvicorn.run(
        "bench.no_metrics_app:create_app",
        factory=True,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        proxy_headers=True,
        log_level="info",
        log_config=uvicorn_log_config("info"),
    )
