"""The FastAPI application: `create_app()` for uvicorn's --factory, or with explicit settings."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from api.limits import BodySizeLimit
from api.problems import install_problem_handlers
from api.routes import health, jobs
from worker.celery_app import make_celery_app
from worker.settings import Settings, get_settings
from worker.state import JobStore

DESCRIPTION = """
Neural style transfer (Gatys et al., VGG-19) as a job queue. `POST /jobs` with a content photo,
one or more style images and optional parameters; poll `GET /jobs/{id}` to watch progress,
losses and snapshots (every 50 iterations); fetch `GET /jobs/{id}/result` when it has succeeded.
Errors are `application/problem+json`.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        app.state.store.redis.close()

    app = FastAPI(title="neural-style-service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = JobStore.from_url(settings.redis_url, settings.job_ttl_seconds)
    app.state.celery = make_celery_app(settings)
    install_problem_handlers(app)
    app.include_router(jobs.router)
    app.include_router(health.router)
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=["Location", "Retry-After", "X-Iteration"],
        )
    # Every file at its limit, plus room for the form's other fields and boundaries.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes * (settings.max_styles + 1) + 1_000_000)
    logging.getLogger(__name__).info("API using Redis at %s", settings.redis_url)
    return app
