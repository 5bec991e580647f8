"""The FastAPI application: `create_app()` for uvicorn's --factory, or with explicit settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.auth import load_keyring
from api.decode_budget import PixelBudget
from api.event_hub import EventHub
from api.limits import BodySizeLimit
from api.metrics import HttpMetricsMiddleware, ServiceMetrics
from api.openapi import install_openapi
from api.problems import install_problem_handlers
from api.routes import events, health, images, jobs, metrics, sweeps, timelapse, web
from api.routes.jobs import tenant_limits
from api.security import RequestGuard
from api.upload_gate import upload_gate
from jobs.blobs import BlobStore
from jobs.queue import make_celery_app
from jobs.reader import JobReader
from jobs.settings import Settings, get_settings
from jobs.store import JobStore

DESCRIPTION = """
Neural style transfer (Gatys et al., VGG-19) as a job queue. `POST /jobs` with a content photo,
one or more style images and optional parameters; watch `GET /jobs/{id}/events` (Server-Sent
Events) or poll `GET /jobs/{id}` (with `If-None-Match`) for progress, losses and snapshots
(every 50 iterations); fetch `GET /jobs/{id}/result` when it has succeeded. Errors are
`application/problem+json`; each `type` links to a page that explains it. A web page to try it
is at `/`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = EventHub(settings.redis_url, app.state.reader)
        app.state.hub = hub
        hub.start()
        yield
        await hub.stop()
        await app.state.reader.close()
        app.state.store.close()
        # obstore's async calls finish on a Tokio thread that may still be handing a result back
        # when the interpreter starts to finalize, and then aborts the process (SIGABRT; a known
        # race of pyo3-async-runtimes, PyO3/pyo3-async-runtimes#40): give them a moment first.
        await asyncio.sleep(0.2)

    app = FastAPI(
        title="neural-style-service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by api.routes.web from the project's own files
        redoc_url=None,
        separate_input_output_schemas=False,
    )
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    app.state.reader = JobReader.from_url(settings.redis_url)
    app.state.blobs = BlobStore(settings.blob_store, settings.blob_min_free_bytes)  # uploads, results, checkpoints
    app.state.upload_gate = upload_gate(settings.max_concurrent_uploads)
    app.state.celery = make_celery_app(settings)
    app.state.tenant_limits = tenant_limits(app.state.store, settings)
    app.state.decode_budget = PixelBudget(settings.decode_pixel_budget, settings.decode_wait_seconds)
    app.state.keyring = load_keyring(settings)  # None: no NST_API_KEYS_FILE, the service is open
    app.state.metrics = ServiceMetrics(app.state.store.redis, settings.worker_heartbeat_seconds)
    install_problem_handlers(app)
    install_openapi(app)
    for module in (jobs, images, timelapse, sweeps, events, health, metrics, web):
        # The routers' routes join the app's own list: include_router wraps each router and
        # matches a request twice, which costs a poll about a tenth of its time. (So app-level
        # dependencies and dependency_overrides do not reach them; none are used.)
        app.router.routes.extend(module.router.routes)
    web.mount_static(app)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["*"],
            expose_headers=[
                "Location",
                "Retry-After",
                "X-Iteration",
                "ETag",
                "WWW-Authenticate",
                "Content-Range",
                "Accept-Ranges",
                "Content-Length",
                "Preference-Applied",
                "Content-Location",
            ],
        )
    # Every file at its limit, plus room for the form's other fields and boundaries.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes * (settings.max_styles + 1) + 1_000_000)
    # Host, Origin and the security headers: outside the body limit, so a refused request is not read.
    app.add_middleware(RequestGuard, allowed_hosts=settings.allowed_host_list, cors_origins=settings.cors_origin_list)
    # Added last, so outermost: it also counts what the middlewares inside answer themselves (413s).
    app.add_middleware(HttpMetricsMiddleware, metrics=app.state.metrics.http, routes=app.router.routes)
    logging.getLogger(__name__).info("API using Redis at %s", settings.redis_url)
    return app
