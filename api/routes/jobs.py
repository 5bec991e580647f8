"""The job resource: submit, read, list and cancel."""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated, Any

import orjson
from celery import Celery
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from kombu.exceptions import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.admission import admit
from api.auth import CallerDep, authenticate
from api.decode_budget import PixelBudget
from api.deps import CeleryDep, ReaderDep, SettingsDep, StoreDep
from api.direct_route import DirectRoute
from api.multipart import form_files, form_text, read_job_form
from api.openapi import SUBMIT_BODY, UNAVAILABLE, job_links, problems
from api.problems import Problem, not_found, validation_problem
from api.schemas import JobList
from api.uploads import check_image, parse_params, read_upload
from api.webhook_form import WebhookRequest, check_webhook, read_webhook_fields
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


@router.post(
    "",
    status_code=202,
    operation_id="submit_job",
    response_model=JobPublic,
    responses={202: {"description": "queued", "headers": LOCATION, "links": job_links("$response.body#/id")}}
    | problems(
        e413="an upload, a field or the whole request is too large",
        e415="the body is not multipart/form-data, or an upload is not an image",
        e422="a missing or unknown field, invalid parameters (`errors` lists each), or a job too large for the "
        "memory of every live worker (`too-much-memory`)",
        e429="too many queued jobs; see Retry-After",
        e503=UNAVAILABLE,
    ),
    openapi_extra={"requestBody": SUBMIT_BODY},
)
async def submit_job(
    request: Request, store: StoreDep, settings: SettingsDep, celery: CeleryDep, caller: CallerDep
) -> Response:
    """Queue a style transfer job; answers 202 with the job and its URL in Location."""
    limits: TenantLimits = request.app.state.tenant_limits
    # A tenant over a limit is told before its upload is read (the limits are taken for good, with
    # the job's own bytes, once the upload is checked).
    refusal = await run_in_threadpool(limits.check, tenant_of(caller))
    if refusal is not None:
        raise limit_problem(refusal, limits.limits, caller is not None)
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
        record = await run_in_threadpool(
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
        )
        job = await run_in_threadpool(view_of, record, store)
    finally:
        await form.close()
    return json_response(job, 202, {"Location": job_url(record.id)})


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
) -> JobRecord:
    """Check everything, store the job and its inputs, then queue it; nothing is kept on error.
    `owner`: the id of the caller's API key (None without keys), to whom the job belongs."""
    budget = budget or PixelBudget(settings.decode_pixel_budget, settings.decode_wait_seconds)
    limits = limits or tenant_limits(store, settings)
    job_params = parse_params(params, len(styles), settings)
    webhook = check_webhook(hook or WebhookRequest(), settings)
    content_bytes, (width, height), style_bytes = read_images(content, styles, settings, budget)
    admit(store.worker_registry(settings.worker_heartbeat_seconds).live().values(), job_params, (height, width))
    if store.queued_count() >= settings.max_queued_jobs:
        raise Problem("queue-full", "the queue is full; try again later", headers={"Retry-After": "30"})
    record = JobRecord(
        id=new_job_id(),
        created_at=utc_now(),
        params=job_params.model_dump(),
        style_count=len(styles),
        owner=owner,
        **webhook,
    )
    tenant = tenant_of(owner)
    refusal = limits.admit(tenant, record.id, len(content_bytes) + sum(len(style) for style in style_bytes))
    if refusal is not None:
        raise limit_problem(refusal, limits.limits, owner is not None)
    try:
        record = store.create(record, content_bytes, style_bytes)
    except BaseException:
        limits.release(tenant, record.id)
        raise
    try:
        send_turn(celery, record.id)
    except OperationalError as exc:
        store.forget(record.id, record.style_count, owner)
        limits.release(tenant, record.id)
        log.error("could not queue job %s: %s", record.id, exc)
        raise Problem("unavailable", "the job queue is not answering; try again", headers={"Retry-After": "5"}) from exc
    return record


def read_images(
    content: UploadFile, styles: list[UploadFile], settings: Settings, budget: PixelBudget
) -> tuple[bytes, tuple[int, int], list[bytes]]:
    """The uploads' bytes, each checked to be an image within the limits; and the content's size."""
    content_bytes = read_upload(content, "content")
    size = check_image(content_bytes, "content", settings, budget)
    style_bytes = []
    for index, upload in enumerate(styles):
        field = "style" if len(styles) == 1 else f"style[{index}]"
        data = read_upload(upload, field)
        check_image(data, field, settings, budget)
        style_bytes.append(data)
    return content_bytes, size, style_bytes


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
    job = await reader.job(job_id, caller)
    if job is None:
        raise not_found()
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
def cancel_job(job_id: str, store: StoreDep, celery: CeleryDep, caller: CallerDep) -> Response:
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
        announce(store, job_id, "completed", celery=celery)
    elif status in ("succeeded", "failed"):
        raise Problem("already-finished", f"the job has {status}; nothing to cancel")
    record = store.get(job_id)
    if record is None:
        raise not_found()
    return json_response(view_of(record, store), 202)
