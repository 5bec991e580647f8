"""Liveness and readiness, for load balancers and `make run`."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ReaderDep, SettingsDep
from api.openapi import problems
from api.problems import Problem
from api.schemas import Health, Readiness
from jobs.worker_reports import readiness_entry

router = APIRouter(tags=["health"])


@router.get("/healthz", operation_id="get_health")
async def healthz() -> Health:
    """200 while the process serves."""
    return Health(status="ok")


@router.get(
    "/readyz",
    operation_id="get_readiness",
    responses=problems(e503="Redis is not answering, or no worker has reported lately"),
)
async def readyz(reader: ReaderDep, settings: SettingsDep) -> Readiness:
    """200 when Redis answers and at least one worker is alive, else 503; the live workers with
    their device, and what each measured there at start (speed, memory, precision, compiling)."""
    await reader.ping()
    reports = await reader.worker_reports(settings.worker_heartbeat_seconds)
    if not reports:
        raise Problem("no-workers", "no worker has reported in the last few seconds")
    live = [readiness_entry(name, report) for name, report in sorted(reports.items())]
    return Readiness.model_validate({"redis": "ok", "workers": len(reports), "live_workers": live})
