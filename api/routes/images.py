"""A job's images: its snapshots (JPEG, in Redis) and its result (PNG, in the blob store; in Redis
for a job of the previous version). Both answer conditional and ranged GETs (api/byte_ranges.py):
ETag and If-None-Match (304), one Range (206, or 416 past the end), Content-Length always. A
result in the blob store is streamed from it a chunk at a time, never whole in memory; with
NST_RESULT_REDIRECT_SECONDS and an S3 store it is a redirect to a signed URL instead."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from api.auth import CallerDep
from api.byte_ranges import Decision, conditions, decide
from api.deps import BlobsDep, ReaderDep, SettingsDep, load_record
from api.openapi import IMAGE_PARAMETERS, REDIRECT, UNAVAILABLE, image_media_type, image_responses, problems
from api.problems import Problem
from jobs.blobs import BlobError, BlobStore, result_path

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

X_ITERATION = {"X-Iteration": {"description": "the snapshot's iteration", "schema": {"type": "integer"}}}
SNAPSHOT_SIZE = "the snapshot: the content's size scaled down to fit NST_SNAPSHOT_MAX_SIDE (1024 px; never up)"
IMMUTABLE = "private, max-age=86400, immutable"  # a snapshot of a given iteration, a finished result
STORE_SECONDS = 10.0  # a blob store that has not answered a HEAD by then is as good as down
STORAGE_RETRY_AFTER = "5"
UNAVAILABLE_OR_STORAGE = f"{UNAVAILABLE}; or the blob store is not answering (storage-unavailable)"


def digest_etag(data: bytes) -> str:
    """A strong ETag of bytes kept in Redis: their hash (a snapshot is small; hashing costs little)."""
    return f'"{hashlib.blake2b(data, digest_size=16).hexdigest()}"'


def without_body(decision: Decision, size: int, headers: dict[str, str]) -> Response | None:
    """The answer when it carries no image (304, or 416 as a problem); None for 200 and 206."""
    if decision.status == 304:
        return Response(status_code=304, headers=headers | decision.headers)
    if decision.status == 416:
        raise Problem(
            "range-not-satisfiable",
            f"the image has {size} bytes; the Range header asks for none of them",
            headers=decision.headers,
        )
    return None


def bytes_answer(data: bytes, etag: str, request: Request, media_type: str, headers: dict[str, str]) -> Response:
    """An image held in memory (from Redis), answered whole, in part or not at all."""
    decision = decide(len(data), etag, conditions(request.headers))
    early = without_body(decision, len(data), headers)
    if early is not None:
        return early
    body = data if decision.length == len(data) else data[decision.start : decision.end]
    return Response(body, status_code=decision.status, media_type=media_type, headers=headers | decision.headers)


def storage_unavailable(exc: Exception) -> Problem:
    log.warning("the blob store failed a read: %s", exc)
    return Problem(
        "storage-unavailable",
        "the blob store is not answering; try again",
        headers={"Retry-After": STORAGE_RETRY_AFTER},
    )


async def chunks(blobs: BlobStore, path: str, start: int, end: int) -> AsyncIterator[bytes]:
    """The object's bytes [start, end). A failure once the headers are out can only cut the
    answer short (the client sees fewer bytes than Content-Length): said in the log first."""
    try:
        async for chunk in blobs.stream_async(path, start, end):
            yield chunk
    except BlobError as exc:
        log.warning("a streamed image was cut short: %s", exc)
        raise


async def blob_answer(
    blobs: BlobStore, path: str, request: Request, media_type: str, headers: dict[str, str]
) -> Response:
    """An image in the blob store: one HEAD for its size and ETag, then its bytes streamed."""
    try:
        async with asyncio.timeout(STORE_SECONDS):
            info = await blobs.head_async(path)
    except (BlobError, TimeoutError) as exc:
        raise storage_unavailable(exc) from exc
    if info is None:
        raise Problem("not-found", "the result has expired")
    decision = decide(info.size, info.etag, conditions(request.headers))
    early = without_body(decision, info.size, headers)
    if early is not None:
        return early
    # Content-Length is set: the server frames the body by it and never chunks it.
    return StreamingResponse(
        chunks(blobs, path, decision.start, decision.end),
        status_code=decision.status,
        media_type=media_type,
        headers=headers | decision.headers,
    )


@router.get(
    "/{job_id}/snapshots/{iteration}",
    operation_id="get_snapshot",
    response_class=Response,
    responses=image_responses("image/jpeg", SNAPSHOT_SIZE, X_ITERATION)
    | problems(
        e404="no such job or snapshot",
        e416="the Range header asks for bytes past the snapshot's end",
        e503=UNAVAILABLE,
    ),
    openapi_extra={"parameters": IMAGE_PARAMETERS},
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
    # `latest` changes as the job runs: revalidated every time, a 304 while it is the same one.
    cache = "no-cache" if iteration == "latest" else IMMUTABLE
    media_type = image_media_type(request.headers.get("accept"), "image/jpeg")
    headers = {"Cache-Control": cache, "X-Iteration": str(number), "Vary": "Accept"}
    return bytes_answer(data, digest_etag(data), request, media_type, headers)


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
    responses=image_responses("image/png", "the result, at the content's original size")
    | REDIRECT
    | problems(
        e404="no such job, or its result has expired",
        e409="the job has not succeeded: it is queued or running, or it was canceled or failed",
        e416="the Range header asks for bytes past the result's end",
        e503=UNAVAILABLE_OR_STORAGE,
    ),
    openapi_extra={"parameters": IMAGE_PARAMETERS},
)
async def get_result(
    job_id: str, reader: ReaderDep, blobs: BlobsDep, settings: SettingsDep, request: Request, caller: CallerDep
) -> Response:
    """The result as PNG at the content's original size; 409 unless the job has succeeded."""
    record = await load_record(job_id, reader, caller)
    if record["status"] != "succeeded":
        raise no_result(record["status"], record.get("error"))
    if not record.get("blobs"):  # a job of the previous version: its result is in Redis
        data = await reader.result(job_id)
        if data is None:
            raise Problem("not-found", "the result has expired")
        return bytes_answer(data, legacy_etag(job_id, data), request, *result_type_and_headers(job_id, request))
    path = result_path(job_id)
    seconds = settings.result_redirect_seconds
    if seconds and blobs.can_sign:
        try:
            url = blobs.sign(path, seconds)
        except BlobError as exc:
            raise storage_unavailable(exc) from exc
        return Response(status_code=307, headers={"Location": url, "Cache-Control": "no-store"})
    return await blob_answer(blobs, path, request, *result_type_and_headers(job_id, request))


def legacy_etag(job_id: str, data: bytes) -> str:
    """A result in Redis is written once, when its job succeeds: its job and size name it, without
    hashing megabytes on the event loop."""
    return f'"{job_id}-{len(data)}"'


def result_type_and_headers(job_id: str, request: Request) -> tuple[str, dict[str, str]]:
    media_type = image_media_type(request.headers.get("accept"), "image/png")
    headers = {"Content-Disposition": f'inline; filename="{job_id}.png"', "Vary": "Accept", "Cache-Control": IMMUTABLE}
    return media_type, headers
