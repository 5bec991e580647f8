"""`GET /metrics`: Prometheus' text format (or OpenMetrics, when the scraper asks for it)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)  # for Prometheus, not for API clients
async def metrics(request: Request) -> Response:
    """This process's HTTP metrics and the whole service's job and worker metrics, read from Redis."""
    encode, media_type = choose_encoder(request.headers.get("accept", ""))
    # The cluster's part reads Redis with the sync client: in a thread, never on the event loop.
    body = await run_in_threadpool(encode, request.app.state.metrics.registry)
    return Response(body, media_type=media_type)
