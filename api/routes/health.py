"""Liveness and readiness, for load balancers and `make run`."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep, StoreDep
from api.problems import Problem
from api.schemas import Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """200 while the process serves."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Redis or every worker is away"}})
def readyz(store: StoreDep, settings: SettingsDep) -> Readiness:
    """200 when Redis answers and at least one worker is alive, else 503."""
    store.redis.ping()
    workers = store.live_workers(3 * settings.worker_heartbeat_seconds)
    if not workers:
        raise Problem(503, "no-workers", "No workers", "no worker has reported in the last few seconds")
    return Readiness(redis="ok", workers=len(workers))
