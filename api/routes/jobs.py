"""The job resource: submit, read, list, cancel, and the snapshot and result images."""

from __future__ import annotations

import logging
from typing import Annotated

from celery import Celery
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from kombu.exceptions import OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import CeleryDep, SettingsDep, StoreDep, load_job
from api.multipart import form_files, form_text, read_job_form
from api.problems import Problem, validation_problem
from api.schemas import JobList, JobPublic
from api.uploads import check_image, parse_params, read_upload
from worker.celery_app import QUEUE_NAME, TASK_NAME
from worker.settings import Settings
from worker.state import JobRecord, JobStore, new_job_id, utc_now

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

PARAMS_HELP = (
    'A JSON object of parameters, e.g. {"iterations": 500, "style_weight": 1e4}; unknown names are '
    "rejected. Names and defaults: iterations 2500, height 384, width 512, keep_aspect false, "
    "content_weight 1, style_weight 1000, learning_rate 2, content_layers [conv4_2], "
    "content_layer_weights [1], style_layers [conv1_1..conv5_1], style_layer_weights [0.5,1,1.5,3,4], "
    "init blend|content|style|noise, noise_ratio 0.7, pooling avg|max, tv_weight 0, "
    "style_blend_weights (one per style), style_scale 1, preserve_colors false, seed null, snapshot_every 50."
)
ERRORS = {
    404: {"description": "no such job"},
    413: {"description": "an upload or the request is too large"},
    415: {"description": "an upload is not an image"},
    422: {"description": "invalid parameters"},
    429: {"description": "too many queued jobs; see Retry-After"},
    503: {"description": "the job store or queue is not answering"},
}


def public(record: JobRecord, store: JobStore) -> JobPublic:
    position = store.queue_position(record.id) if record.status == "queued" else None
    return JobPublic.from_record(record, position)


SUBMIT_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["content", "style"],
                "properties": {
                    "content": {"type": "string", "format": "binary", "description": "the content photo"},
                    "style": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "one or more style images (repeat the field)",
                    },
                    "params": {"type": "string", "description": PARAMS_HELP},
                },
            }
        }
    },
}


@router.post("", status_code=202, responses=ERRORS, openapi_extra={"requestBody": SUBMIT_BODY})
async def submit_job(
    request: Request, store: StoreDep, settings: SettingsDep, celery: CeleryDep, response: Response
) -> JobPublic:
    """Queue a style transfer job; answers 202 with the job and its URL in Location."""
    form = await read_job_form(request, settings)
    try:
        contents = form_files(form, "content")
        styles = form_files(form, "style")
        params = form_text(form, "params")
        missing = [name for name, given in (("content", contents), ("style", styles)) if not given]
        if missing or len(contents) > 1:
            errors = [{"field": name, "message": "a file is required"} for name in missing]
            if len(contents) > 1:
                errors.append({"field": "content", "message": "give exactly one content image"})
            raise validation_problem(errors)
        # Decoding and Redis are blocking work: off the event loop.
        record = await run_in_threadpool(accept_job, store, settings, celery, contents[0], styles, params)
    finally:
        await form.close()
    response.headers["Location"] = f"/jobs/{record.id}"
    return public(record, store)


def accept_job(
    store: JobStore,
    settings: Settings,
    celery: Celery,
    content: UploadFile,
    styles: list[UploadFile],
    params: str | None,
) -> JobRecord:
    """Check everything, store the job and its inputs, then queue it; nothing is kept on error."""
    job_params = parse_params(params, len(styles), settings)
    content_bytes = read_upload(content, "content")
    check_image(content_bytes, "content", settings)
    style_bytes = []
    for index, upload in enumerate(styles):
        field = "style" if len(styles) == 1 else f"style[{index}]"
        data = read_upload(upload, field)
        check_image(data, field, settings)
        style_bytes.append(data)
    if store.queued_count() >= settings.max_queued_jobs:
        raise Problem(
            429, "queue-full", "Too many queued jobs", "the queue is full; try again later",
            headers={"Retry-After": "30"},
        )  # fmt: skip
    record = JobRecord(id=new_job_id(), created_at=utc_now(), params=job_params.model_dump(), style_count=len(styles))
    record = store.create(record, content_bytes, style_bytes)
    try:
        celery.send_task(TASK_NAME, args=[record.id], task_id=record.id, queue=QUEUE_NAME)
    except OperationalError as exc:
        store.forget(record.id, record.style_count)
        log.error("could not queue job %s: %s", record.id, exc)
        raise Problem(503, "unavailable", "Service unavailable", "the job queue is not answering; try again") from exc
    return record


@router.get("", responses=ERRORS)
def list_jobs(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100, description="jobs per page")] = 20,
    cursor: Annotated[str | None, Query(max_length=20, pattern=r"^\d+$", description="next_cursor of a page")] = None,
) -> JobList:
    """Jobs, newest first, a page at a time."""
    records, next_cursor = store.list_jobs(limit, int(cursor) if cursor else None)
    return JobList(
        items=[public(r, store) for r in records], next_cursor=None if next_cursor is None else str(next_cursor)
    )


@router.get("/{job_id}", responses=ERRORS)
def get_job(job_id: str, store: StoreDep) -> JobPublic:
    """The job: status, progress, losses, ETA, queue position, snapshot and result URLs."""
    return public(load_job(job_id, store), store)


@router.post("/{job_id}/cancel", status_code=202, responses=ERRORS | {409: {"description": "already finished"}})
def cancel_job(job_id: str, store: StoreDep) -> JobPublic:
    """Cancel a job: a queued one never starts, a running one stops within a second."""
    record = load_job(job_id, store)
    applied, status = store.transition(job_id, ["queued"], {"status": "canceled", "finished_at": utc_now()})
    if applied:
        store.dequeue(job_id)
        store.refresh_expiry(job_id)
    elif status == "running":
        store.request_cancel(job_id)
    elif status in ("succeeded", "failed"):
        raise Problem(409, "already-finished", "Job already finished", f"the job has {status}; nothing to cancel")
    record = load_job(job_id, store)
    return public(record, store)


@router.get(
    "/{job_id}/snapshots/{iteration}",
    response_class=Response,
    responses=ERRORS | {200: {"content": {"image/jpeg": {}}, "description": "the snapshot, at the content's size"}},
)
def get_snapshot(job_id: str, iteration: str, store: StoreDep) -> Response:
    """A snapshot as JPEG; `latest` names the newest."""
    record = load_job(job_id, store)
    if iteration == "latest":
        if not record.snapshots:
            raise Problem(404, "not-found", "Not found", "the job has no snapshot yet")
        number = record.snapshots[-1]
    elif iteration.isdigit() and len(iteration) <= 6 and int(iteration) in record.snapshots:
        number = int(iteration)
    else:
        raise Problem(404, "not-found", "Not found", f"no snapshot {iteration[:20]!r} for this job")
    data = store.snapshot(job_id, number)
    if data is None:
        raise Problem(404, "not-found", "Not found", "the snapshot has expired")
    cache = "no-cache" if iteration == "latest" else "private, max-age=86400, immutable"
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache, "X-Iteration": str(number)})


@router.get(
    "/{job_id}/result",
    response_class=Response,
    responses=ERRORS
    | {200: {"content": {"image/png": {}}, "description": "the result"}, 409: {"description": "not succeeded"}},
)
def get_result(job_id: str, store: StoreDep) -> Response:
    """The result as PNG at the content's original size; 409 until the job has succeeded."""
    record = load_job(job_id, store)
    if record.status != "succeeded":
        raise Problem(
            409, "not-finished", "No result", f"the job is {record.status}; the result exists once it succeeds"
        )
    data = store.result(job_id)
    if data is None:
        raise Problem(404, "not-found", "Not found", "the result has expired")
    return Response(data, media_type="image/png", headers={"Content-Disposition": f'inline; filename="{job_id}.png"'})
