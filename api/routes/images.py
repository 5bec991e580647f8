"""A job's images: its snapshots (JPEG) and its result (PNG)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from api.auth import CallerDep
from api.deps import ReaderDep, load_record
from api.openapi import UNAVAILABLE, binary, image_media_type, problems
from api.problems import Problem

router = APIRouter(prefix="/jobs", tags=["jobs"])

X_ITERATION = {"X-Iteration": {"description": "the snapshot's iteration", "schema": {"type": "integer"}}}


SNAPSHOT_SIZE = "the snapshot: the content's size scaled down to fit NST_SNAPSHOT_MAX_SIDE (1024 px; never up)"


@router.get(
    "/{job_id}/snapshots/{iteration}",
    operation_id="get_snapshot",
    response_class=Response,
    responses={200: binary("image/jpeg", SNAPSHOT_SIZE, X_ITERATION)}
    | problems(e404="no such job or snapshot", e503=UNAVAILABLE),
)
async def get_snapshot(job_id: str, iteration: str, reader: ReaderDep, request: Request, caller: CallerDep) -> Response:
    """A snapshot as JPEG: `iteration` is one of the job's snapshot iterations, or `latest`."""
    record = await load_record(job_id, reader, caller)
    snapshots: list[int] = record.get("snapshots", [])
    if iteration == "latest":
        if not snapshots:
            raise Problem("not-found", "the job has no snapshot yet")
        number = snapshots[-1]
    elif iteration.isascii() and iteration.isdigit() and len(iteration) <= 6 and int(iteration) in snapshots:
        number = int(iteration)
    else:
        raise Problem("not-found", f"no snapshot {iteration[:20]!r} for this job")
    data = await reader.snapshot(job_id, number)
    if data is None:
        raise Problem("not-found", "the snapshot has expired")
    cache = "no-cache" if iteration == "latest" else "private, max-age=86400, immutable"
    media_type = image_media_type(request.headers.get("accept"), "image/jpeg")
    headers = {"Cache-Control": cache, "X-Iteration": str(number), "Vary": "Accept"}
    return Response(data, media_type=media_type, headers=headers)


def no_result(status: str, error: dict[str, object] | None) -> Problem:
    """409 worded for the job's status: not yet, never (canceled), or never (failed, and why)."""
    if status == "canceled":
        return Problem("no-result", "the job was canceled before it finished; it has no result")
    if status == "failed":
        why = f": {error['detail']}" if error and error.get("detail") else ""
        return Problem("no-result", f"the job failed{why}; it has no result")
    return Problem("not-finished", f"the job is {status}; the result exists once it succeeds")


@router.get(
    "/{job_id}/result",
    operation_id="get_result",
    response_class=Response,
    responses={200: binary("image/png", "the result, at the content's original size")}
    | problems(
        e404="no such job, or its result has expired",
        e409="the job has not succeeded: it is queued or running, or it was canceled or failed",
        e503=UNAVAILABLE,
    ),
)
async def get_result(job_id: str, reader: ReaderDep, request: Request, caller: CallerDep) -> Response:
    """The result as PNG at the content's original size; 409 unless the job has succeeded."""
    record = await load_record(job_id, reader, caller)
    if record["status"] != "succeeded":
        raise no_result(record["status"], record.get("error"))
    data = await reader.result(job_id)
    if data is None:
        raise Problem("not-found", "the result has expired")
    media_type = image_media_type(request.headers.get("accept"), "image/png")
    headers = {"Content-Disposition": f'inline; filename="{job_id}.png"', "Vary": "Accept"}
    return Response(data, media_type=media_type, headers=headers)
