"""The job resource: submit, read, list, cancel and delete."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from typing import Annotated, Any

import orjson
import redis
from celery import Celery
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from kombu.exceptions import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.admission import admit
from api.auth import CallerDep, authenticate
from api.decode_budget import PixelBudget
from api.deps import BlobsDep, CeleryDep, ReaderDep, SettingsDep, StoreDep
from api.direct_route import DirectRoute
from api.event_hub import EventHub
from api.multipart import form_files, form_text, read_job_form
from api.openapi import PREFER_WAIT, PREFERENCE_APPLIED, SUBMIT_BODY, UNAVAILABLE, job_links, problems
from api.prefer_wait import requested_wait, wait_for_end
from api.problems import Problem, not_found, validation_problem
from api.redis_room import check_redis_room
from api.schemas import JobList
from api.upload_gate import upload_slot
from api.uploads import check_image, parse_params, upload_size
from api.webhook_form import WebhookRequest, check_webhook, read_webhook_fields
from core.batching import batch_key
from jobs.blobs import BlobError, BlobStore, StoreFull, content_path, input_paths, style_path
from jobs.queue import send_turn
from jobs.reader import JobReader
from jobs.record import JobRecord, is_job_id, new_job_id, utc_now
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.tenancy import Limits, Refusal, TenantLimits, tenant_of
from jobs.view import JobPublic, job_url, job_view
from jobs.webhooks import announce

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

LOCATION = {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "an ETag this job answered with: 304 while it is unchanged",
    "schema": {"type": "string"},
}
ETAG = {
    "ETag": {
        "description": "send it back in If-None-Match: 304 while the job is unchanged",
        "schema": {"type": "string"},
    }
}


def json_response(data: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(data)
    return Response(body, status_code=status_code, media_type="application/json", headers=headers)


def view_of(record: JobRecord, store: JobStore) -> dict[str, Any]:
    """The job as clients see it, from the sync store (the write routes)."""
    position = store.queue_position(record.id) if record.status == "queued" else None
    return job_view(record.model_dump(), None if position is None else position - 1)


# submit_job's answers: 202 queued, or 200 when `Prefer: wait=N` saw the job end.
SUBMITTED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": JobPublic,
        "description": "with `Prefer: wait=N`: the job ended (succeeded, failed or was canceled) within N seconds",
        "headers": LOCATION | PREFERENCE_APPLIED,
        "links": job_links("$response.body#/id"),
    },
    202: {
        "description": "queued (with `Prefer: wait=N`: it had not ended after N seconds)",
        "headers": LOCATION | PREFERENCE_APPLIED,
        "links": job_links("$response.body#/id"),
    },
}


@router.post(
    "",
    status_code=202,
    operation_id="submit_job",
    response_model=JobPublic,
    responses=SUBMITTED
    | problems(
        e413="an upload, a field or the whole request is too large",
        e415="the body is not multipart/form-data, or an upload is not an image",
        e422="a missing or unknown field, invalid parameters (`errors` lists each), or a job too large for the "
        "memory of every live worker (`too-much-memory`)",
        e429="too many queued jobs; see Retry-After",
        e503=f"{UNAVAILABLE}; or Redis is past its high-water mark (`service-full`), or the blob store did not take "
        "the uploads (`storage-unavailable`): nothing was stored",
        e507="the blob store has no room for the uploads (`storage-full`): nothing was stored",
    ),
    openapi_extra={"requestBody": SUBMIT_BODY, "parameters": [PREFER_WAIT]},
)
async def submit_job(
    request: Request, store: StoreDep, settings: SettingsDep, celery: CeleryDep, blobs: BlobsDep, caller: CallerDep
) -> Response:
    """Queue a style transfer job; answers 202 with the job and its URL in Location. With `Prefer:
    wait=N` (seconds, at most 60) it answers 200 with the finished job if it ends within N seconds
    of the request."""
    started = asyncio.get_running_loop().time()
    wait = requested_wait(request.headers.getlist("prefer"))
    limits: TenantLimits = request.app.state.tenant_limits
    # A tenant over a limit is told before its upload is read (the limits are taken for good, with
    # the job's own bytes, once the upload is checked).
    refusal = await run_in_threadpool(limits.check, tenant_of(caller))
    if refusal is not None:
        raise limit_problem(refusal, limits.limits, caller is not None)
    # A few submissions of this process at a time are read, checked and stored; the rest wait
    # here, their bodies unread, so that polls and event streams are served meanwhile.
    async with upload_slot(request):
        record = await read_and_accept(request, store, settings, celery, blobs, caller, limits)
    headers = {"Location": job_url(record.id), "Vary": "Prefer"}
    if wait is None:
        return json_response(await run_in_threadpool(view_of, record, store), 202, headers)
    # The wait counts from the request's arrival, its upload included.
    left = wait - (asyncio.get_running_loop().time() - started)
    headers["Preference-Applied"] = f"wait={wait}"
    hub: EventHub = request.app.state.hub
    reader: JobReader = request.app.state.reader
    finished = await wait_for_end(hub, reader, record.id, caller, max(left, 0.0), request.receive)
    if finished is not None:
        return json_response(finished, 200, headers | {"Content-Location": job_url(record.id)})
    # Not ended: the job as it is now (running, perhaps), as GET /jobs/{id} would show it.
    with contextlib.suppress(redis.RedisError):
        now = await reader.job(record.id, caller, settings.worker_heartbeat_seconds)
        if now is not None:
            return json_response(now, 202, headers)
    return json_response(await run_in_threadpool(view_of, record, store), 202, headers)


async def read_and_accept(
    request: Request,
    store: JobStore,
    settings: Settings,
    celery: Celery,
    blobs: BlobStore,
    caller: str | None,
    limits: TenantLimits,
) -> JobRecord:
    """The form read and checked, its files stored and the job queued (submit_job's upload slot)."""
    form = await read_job_form(request, settings)
    try:
        contents = form_files(form, "content")
        styles = form_files(form, "style")
        params = await form_text(form, "params")
        hook = await read_webhook_fields(form)
        missing = [name for name, given in (("content", contents), ("style", styles)) if not given]
        if missing or len(contents) > 1:
            errors = [{"field": name, "message": "a file is required"} for name in missing]
            if len(contents) > 1:
                errors.append({"field": "content", "message": "give exactly one content image"})
            raise validation_problem(errors)
        if len(styles) > settings.max_styles:
            raise Problem("too-many-parts", f"at most {settings.max_styles} style images per job")
        # Decoding and Redis are blocking work: off the event loop.
        budget = request.app.state.decode_budget
        return await run_in_threadpool(
            accept_job,
            store,
            settings,
            celery,
            contents[0],
            styles,
            params,
            hook,
            owner=caller,
            budget=budget,
            limits=limits,
            blobs=blobs,
        )
    finally:
        await form.close()


def accept_job(
    store: JobStore,
    settings: Settings,
    celery: Celery,
    content: UploadFile,
    styles: list[UploadFile],
    params: str | None,
    hook: WebhookRequest | None = None,
    owner: str | None = None,
    budget: PixelBudget | None = None,
    limits: TenantLimits | None = None,
    blobs: BlobStore | None = None,
    sweep: str | None = None,
) -> JobRecord:
    """Check everything, store the uploads in the blob store and the job in Redis, then queue it;
    nothing is kept on error, objects included. `owner`: the id of the caller's API key (None
    without keys), to whom the job belongs; `sweep`: the sweep it is a cell of (api/routes/sweeps.py)."""
    budget = budget or PixelBudget(settings.decode_pixel_budget, settings.decode_wait_seconds)
    limits = limits or tenant_limits(store, settings)
    blobs = blobs or BlobStore(settings.blob_store, settings.blob_min_free_bytes)
    job_params = parse_params(params, len(styles), settings)
    webhook = check_webhook(hook or WebhookRequest(), settings)
    sizes, (width, height) = check_images(content, styles, settings, budget)
    admit(store.worker_registry(settings.worker_heartbeat_seconds).live().values(), job_params, (height, width))
    if store.queued_count() >= settings.max_queued_jobs:
        raise Problem("queue-full", "the queue is full; try again later", headers={"Retry-After": "30"})
    input_bytes = sum(sizes)
    # Room in Redis and in the store is checked before anything is written, the tenant's limits too.
    check_redis_room(store.redis, settings.redis_high_water)
    try:
        blobs.check_room(input_bytes)
    except StoreFull as exc:
        raise Problem("storage-full", f"{exc}; nothing was stored") from exc
    record = JobRecord(
        id=new_job_id(),
        created_at=utc_now(),
        params=job_params.model_dump(),
        style_count=len(styles),
        owner=owner,
        input_bytes=input_bytes,
        blobs=True,
        batch_key=batch_key(job_params, (height, width)),
        content_size=[height, width],
        sweep=sweep,
        **webhook,
    )
    tenant = tenant_of(owner)
    refusal = limits.admit(tenant, record.id, input_bytes)
    if refusal is not None:
        raise limit_problem(refusal, limits.limits, owner is not None)
    try:
        store_inputs(blobs, record.id, content, styles)
        record = store.create(record)
    except BaseException:
        # A create whose reply was lost may have been applied: remove the job too, or a worker
        # would take it and find no inputs.
        with contextlib.suppress(redis.RedisError):
            store.forget(record.id)
        remove_objects(blobs, record.id)
        limits.release(tenant, record.id)
        raise
    try:
        send_turn(celery, record.id)
    except OperationalError as exc:
        store.forget(record.id)
        remove_objects(blobs, record.id)
        limits.release(tenant, record.id)
        log.error("could not queue job %s: %s", record.id, exc)
        raise Problem("unavailable", "the job queue is not answering; try again", headers={"Retry-After": "5"}) from exc
    return record


def check_images(
    content: UploadFile, styles: list[UploadFile], settings: Settings, budget: PixelBudget
) -> tuple[list[int], tuple[int, int]]:
    """Each upload checked to be an image within the limits, from its spooled file; their sizes in
    bytes (the content's first), and the content's (width, height)."""
    sizes = [upload_size(content, "content")]
    size = check_image(content.file, "content", settings, budget)
    for index, upload in enumerate(styles):
        field = "style" if len(styles) == 1 else f"style[{index}]"
        sizes.append(upload_size(upload, field))
        check_image(upload.file, field, settings, budget)
    return sizes, size


def store_inputs(blobs: BlobStore, job_id: str, content: UploadFile, styles: list[UploadFile]) -> None:
    """Each upload into the blob store, streamed from its spooled file a part at a time."""
    uploads = [(content_path(job_id), content), *((style_path(job_id, i), style) for i, style in enumerate(styles))]
    try:
        for path, upload in uploads:
            upload.file.seek(0)
            blobs.put(path, upload.file)
    except StoreFull as exc:
        raise Problem("storage-full", f"{exc}; nothing was kept") from exc
    except BlobError as exc:
        log.error("job %s: the blob store did not take its uploads: %s", job_id, exc)
        detail = "the blob store (NST_BLOB_STORE) did not take the uploads; nothing was kept, try again"
        raise Problem("storage-unavailable", detail, headers={"Retry-After": "5"}) from exc


def remove_objects(blobs: BlobStore, job_id: str) -> None:
    """Best effort: what a job that was not queued (or was deleted) left in the blob store. The
    sweeper removes what this could not."""
    try:
        blobs.delete_job(job_id)
    except BlobError as exc:
        log.warning("job %s: its objects were not removed (the sweeper will): %s", job_id, exc)


def remove_inputs(blobs: BlobStore, record: JobRecord | None) -> None:
    """Best effort: the uploads of a job that ended without running (the sweeper is the second net)."""
    if record is None or not record.blobs:
        return
    try:
        blobs.delete(input_paths(record.id, record.style_count))
    except BlobError as exc:
        log.warning("job %s: its inputs were not removed (the sweeper will): %s", record.id, exc)


def tenant_limits(store: JobStore, settings: Settings) -> TenantLimits:
    """The per-key limits of the settings, kept in the job store's Redis."""
    limits = Limits(
        settings.max_active_jobs_per_key, settings.max_submissions_per_minute, settings.max_stored_bytes_per_key
    )
    return store.tenant_limits(limits)


def limit_problem(refusal: Refusal, limits: Limits, keyed: bool) -> Problem:
    """429 for the limit that refused a submission, with the figures and when to retry."""
    who = "this API key" if keyed else "this service (it has no API keys: every client shares its limits)"
    retry = {"Retry-After": str(refusal.retry_after)}
    if refusal.limit == "active":
        return Problem(
            "too-many-active-jobs",
            f"{who} has {refusal.value} jobs queued or running, the most it may; try again once one has ended",
            headers=retry,
            active_jobs=refusal.value,
            limit=limits.active_jobs,
        )
    if refusal.limit == "submissions":
        return Problem(
            "too-many-submissions",
            f"{who} has had {refusal.value} jobs accepted this minute, the most it may; try again in "
            f"{refusal.retry_after} s",
            headers=retry,
            submissions=refusal.value,
            limit=limits.submissions_per_minute,
        )
    return Problem(
        "too-much-stored",
        f"{who}'s jobs hold {refusal.value} bytes, and may hold at most {limits.stored_bytes} with this job's "
        "uploads; try again once some have expired",
        headers=retry,
        stored_bytes=refusal.value,
        limit=limits.stored_bytes,
    )


@router.get(
    "",
    operation_id="list_jobs",
    response_model=JobList,
    responses={200: {"description": "a page of jobs", "links": job_links("$response.body#/items/0/id")}}
    | problems(e422="a bad limit or cursor", e503=UNAVAILABLE),
)
async def list_jobs(
    reader: ReaderDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
    cursor: Annotated[
        str | None, Query(max_length=20, pattern=r"^\d*$", description="next_cursor of a page; empty: the first page")
    ] = None,
) -> Response:
    """Jobs, newest first, a page at a time (with API keys: the caller's jobs only)."""
    jobs, next_cursor = await reader.list_jobs(limit, int(cursor) if cursor else None, caller)
    return json_response({"items": jobs, "next_cursor": None if next_cursor is None else str(next_cursor)})


def matches(if_none_match: str | None, etag: str) -> bool:
    """If-None-Match against our (strong) ETag, weak comparison as RFC 9110 asks for GET."""
    if not if_none_match:
        return False
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return etag in candidates or "*" in candidates


async def get_job(job_id: str, request: Request) -> Response:
    """The job: status, progress, losses, ETA, queue position, snapshot and result URLs."""
    # The most frequent request of all (every poll): one HGETALL, no dependency to solve.
    caller = authenticate(request)
    reader: JobReader = request.app.state.reader
    settings: Settings = request.app.state.settings
    job = await reader.job(job_id, caller, settings.worker_heartbeat_seconds)  # queued: with an ETA
    if job is None:
        raise not_found()
    # The ETag hashes the whole answer, the ETA included: an ETA that changed is a new ETag, never a 304.
    body = orjson.dumps(job)
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


router.add_api_route(
    "/{job_id}",
    get_job,
    methods=["GET"],
    route_class_override=DirectRoute,  # every poll: FastAPI documents it but does not mediate it
    operation_id="get_job",
    response_model=JobPublic,
    responses={
        200: {"description": "the job", "headers": ETAG},
        304: {"description": "unchanged since the ETag in If-None-Match", "headers": ETAG},
    }
    | problems(e404="no such job", e503=UNAVAILABLE),
    openapi_extra={"parameters": [IF_NONE_MATCH]},
)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    operation_id="cancel_job",
    response_model=JobPublic,
    responses=problems(e404="no such job", e409="the job has already succeeded or failed", e503=UNAVAILABLE),
)
def cancel_job(job_id: str, store: StoreDep, celery: CeleryDep, caller: CallerDep, blobs: BlobsDep) -> Response:
    """Cancel a job: a queued one never starts; a running one stops within a second, and says
    `cancel_requested` until it has."""
    if caller is not None:  # another key's job is not there for this one: checked before anything changes
        own = store.get(job_id) if is_job_id(job_id) else None
        if own is None or own.owner != caller:
            raise not_found()
    outcome, status = store.cancel(job_id) if is_job_id(job_id) else ("missing", None)
    if outcome == "missing":
        raise not_found()
    if outcome == "canceled":
        store.refresh_expiry(job_id)
        remove_inputs(blobs, store.get(job_id))  # it never runs: what it uploaded goes now
        announce(store, job_id, "completed", celery=celery)
    elif status in ("succeeded", "failed"):
        raise Problem("already-finished", f"the job has {status}; nothing to cancel")
    record = store.get(job_id)
    if record is None:
        raise not_found()
    return json_response(view_of(record, store), 202)


@router.delete(
    "/{job_id}",
    status_code=204,
    operation_id="delete_job",
    response_class=Response,
    responses={204: {"description": "deleted: the job, its snapshots and its pictures are gone"}}
    | problems(e404="no such job", e503=UNAVAILABLE),
)
def delete_job(job_id: str, store: StoreDep, blobs: BlobsDep, caller: CallerDep) -> Response:
    """Delete a job, whatever its status: a queued one never starts, a running one stops within a
    second; its state, events, snapshots and pictures are removed. Answers 204 with no body."""
    if not is_job_id(job_id):
        raise not_found()
    if caller is not None:  # another key's job is not there for this one: checked before anything changes
        own = store.get(job_id)
        if own is None or own.owner != caller:
            raise not_found()
    if not store.delete(job_id):
        raise not_found()
    # After the record: no run or reader finds the job any more, so nothing writes these again.
    remove_objects(blobs, job_id)
    return Response(status_code=204)
