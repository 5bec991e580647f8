"""Sweeps: one job per cell of a parameter grid, made, followed, canceled and deleted together.

`POST /sweeps` takes the form of `POST /jobs` plus `grid` and `each_style` (api/sweep_grid.py).
Each cell's job is accepted by `accept_job`, exactly as `POST /jobs` accepts one (stored, checked,
admitted, counted against its key's limits, queued), all or nothing: if a cell is refused, the
jobs made for the sweep so far are removed and the refusal is the answer. The sweep itself is a
small record (jobs/sweeps.py) of its axes and its cells' job ids."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
from typing import Any, cast

import redis
from celery import Celery
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException

from api.auth import CallerDep
from api.contact_sheet import Tile, render_sheet, thumbnail
from api.decode_budget import PixelBudget
from api.deps import BlobsDep, CeleryDep, SettingsDep, StoreDep
from api.multipart import FORM_FIELDS, FileTooLarge, LimitedMultiPartParser, form_files, form_text
from api.openapi import OCTET_STREAM, SUBMIT_BODY, UNAVAILABLE, image_media_type, job_links, problems
from api.problems import Problem, file_problem, not_found, validation_problem
from api.routes.jobs import accept_job, json_response, limit_problem, matches, remove_inputs, remove_objects
from api.sweep_grid import SweepPlan, check_cells, parse_flag, parse_grid, parse_object, plan_sweep, style_label
from api.upload_gate import upload_slot
from api.webhook_form import WebhookRequest, read_webhook_fields
from core.params import StyleParams
from jobs.blobs import BlobError, BlobStore, result_path
from jobs.record import is_job_id, new_job_id, utc_now
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.sweeps import (
    STYLE_AXIS,
    CellState,
    SweepCell,
    SweepPublic,
    SweepRecord,
    SweepStore,
    sheet_tag,
    sweep_url,
    sweep_view,
)
from jobs.tenancy import Refusal, TenantLimits, tenant_of
from jobs.webhooks import announce

log = logging.getLogger(__name__)
router = APIRouter(prefix="/sweeps", tags=["sweeps"])

SWEEP_FIELDS = (*FORM_FIELDS, "grid", "each_style")
SHEET_MEDIA_TYPE = "image/jpeg"

SWEEP_BODY: dict[str, Any] = copy.deepcopy(SUBMIT_BODY)
_FORM = SWEEP_BODY["content"]["multipart/form-data"]
_FORM["schema"]["properties"]["params"]["description"] = (
    "the parameters every cell starts from, as a JSON object (a cell's grid values replace them)"
)


def grid_axes_schema() -> dict[str, Any]:
    """Each parameter as a grid axis: a non-empty list of values of that parameter's own schema."""
    params = StyleParams.model_json_schema(ref_template="#/components/schemas/{model}")
    axes = {}
    for name, schema in params["properties"].items():
        item = {key: value for key, value in schema.items() if key not in ("default", "title", "description")}
        axes[name] = {"type": "array", "minItems": 1, "items": item, "description": f"the values of {name} to try"}
    return axes


_FORM["schema"]["properties"]["grid"] = {
    "type": "object",
    "maxProperties": 2,
    "additionalProperties": False,
    "properties": grid_axes_schema(),
    "description": 'parameter name -> the values to try, e.g. {"style_weight": [100, 1000, 10000], '
    '"style_scale": [0.5, 1.0]}: one job per combination (at most NST_MAX_SWEEP_CELLS, 24 by default). '
    "At most two axes, each_style counting as one. Sent as a JSON part or a text field holding the JSON.",
}
_FORM["schema"]["properties"]["each_style"] = {
    "type": "boolean",
    "default": False,
    "description": 'try the style images one by one: an axis named "style" whose values are their indices; '
    "each of its cells' jobs has that one style image (style_blend_weights is ignored)",
}
_FORM["encoding"]["grid"] = {"contentType": "application/json"}

LOCATION = {"Location": {"description": "the sweep's URL", "schema": {"type": "string"}}}
SWEEP_ID = "$response.body#/id"
SWEEP_LINKS = {
    name: {"operationId": name, "parameters": {"sweep_id": SWEEP_ID}, "description": f"{name} for this sweep"}
    for name in ("get_sweep", "get_sweep_sheet", "cancel_sweep")
}
SHEET_HEADERS = {
    "ETag": {"description": "send it back in If-None-Match: 304 while no cell changed", "schema": {"type": "string"}},
    "Cache-Control": {"description": "`no-cache`: the sheet fills in as jobs end", "schema": {"type": "string"}},
}
BINARY = {"schema": {"type": "string", "format": "binary"}}


def sweep_store(request: Request) -> SweepStore:
    """The process's sweep store, on the job store's Redis connection."""
    state = request.app.state
    if getattr(state, "sweeps", None) is None:
        store: JobStore = state.store
        state.sweeps = SweepStore(store.redis, store.ttl)
    return cast(SweepStore, state.sweeps)


@router.post(
    "",
    status_code=202,
    operation_id="submit_sweep",
    response_model=SweepPublic,
    responses={202: {"description": "every cell's job is queued", "headers": LOCATION, "links": SWEEP_LINKS}}
    | problems(
        e413="an upload, a field or the whole request is too large",
        e415="the body is not multipart/form-data, or an upload is not an image",
        e422="a missing or unknown field, a bad grid (unknown parameter, more than two axes, too many cells), "
        "invalid parameters in a cell (`errors` names the grid value, `grid.style_weight[2]`), or a job too large "
        "for the memory of every live worker: no job was made",
        e429="too many queued jobs, or the API key's limits (active jobs, submissions a minute, bytes held) would "
        "be passed by the sweep's jobs; see Retry-After. No job was made",
        e503=f"{UNAVAILABLE}; or Redis is past its high-water mark, or the blob store did not take the uploads",
        e507="the blob store has no room for the uploads: nothing was stored",
    ),
    openapi_extra={"requestBody": SWEEP_BODY},
)
async def submit_sweep(
    request: Request, store: StoreDep, settings: SettingsDep, celery: CeleryDep, blobs: BlobsDep, caller: CallerDep
) -> Response:
    """Queue one job per cell of a parameter grid (all or none); answers 202 with the sweep."""
    limits: TenantLimits = request.app.state.tenant_limits
    refusal = await run_in_threadpool(limits.check, tenant_of(caller))
    if refusal is not None:
        raise limit_problem(refusal, limits.limits, caller is not None)
    sweeps = sweep_store(request)
    async with upload_slot(request):
        form = await read_sweep_form(request, settings)
        try:
            content, styles, base, plan, hook = await read_sweep_fields(form, settings)
            budget: PixelBudget = request.app.state.decode_budget
            record = await run_in_threadpool(
                accept_sweep, store, sweeps, settings, celery, blobs, limits, budget, content, styles, base, plan,
                hook, caller,
            )  # fmt: skip
        finally:
            await form.close()
    view = await run_in_threadpool(read_view, sweeps, record)
    return json_response(view, 202, {"Location": sweep_url(record.id)})


async def read_sweep_form(request: Request, settings: Settings) -> FormData:
    """api.multipart.read_job_form's checks, with the sweep's two fields besides the job's."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise Problem(
            "unsupported-media-type",
            "send multipart/form-data with the fields content, style (one or more), params, grid and each_style",
        )
    parser = LimitedMultiPartParser(
        request.headers, request, max_file_bytes=settings.max_upload_bytes, max_files=settings.max_styles + 3
    )  # the content, the styles, and params and grid when they come as JSON parts
    try:
        form = await parser.parse()
    except FileTooLarge as exc:
        raise file_problem("too-large", exc.field, exc.message) from exc
    except MultiPartException as exc:
        if exc.message.startswith(("Too many", "Part exceeded", "Field exceeded")):
            raise Problem("too-many-parts", exc.message) from exc
        message = f"malformed multipart body: {exc.message}"
        raise validation_problem([{"field": "request", "message": message}]) from exc
    unknown = sorted({name for name, _ in form.multi_items()} - set(SWEEP_FIELDS))
    if unknown:
        await form.close()
        raise validation_problem([{"field": name, "message": "unknown form field"} for name in unknown])
    return form


async def read_sweep_fields(
    form: FormData, settings: Settings
) -> tuple[UploadFile, list[UploadFile], dict[str, Any], SweepPlan, WebhookRequest]:
    """The uploads, the base parameters, the plan of cells (each checked) and the webhook fields."""
    contents = form_files(form, "content")
    styles = form_files(form, "style")
    missing = [name for name, given in (("content", contents), ("style", styles)) if not given]
    if missing or len(contents) > 1:
        errors = [{"field": name, "message": "a file is required"} for name in missing]
        if len(contents) > 1:
            errors.append({"field": "content", "message": "give exactly one content image"})
        raise validation_problem(errors)
    if len(styles) > settings.max_styles:
        raise Problem("too-many-parts", f"at most {settings.max_styles} style images per job")
    base = parse_object(await form_text(form, "params"), "params")
    grid = parse_grid(await form_text(form, "grid"))
    each_style = parse_flag(await form_text(form, "each_style"), "each_style")
    names = [style_label(upload.filename, index) for index, upload in enumerate(styles)]
    plan = plan_sweep(grid, each_style, names, settings)
    hook = await read_webhook_fields(form)
    return contents[0], styles, base, plan, hook


def accept_sweep(
    store: JobStore,
    sweeps: SweepStore,
    settings: Settings,
    celery: Celery,
    blobs: BlobStore,
    limits: TenantLimits,
    budget: PixelBudget,
    content: UploadFile,
    styles: list[UploadFile],
    base: dict[str, Any],
    plan: SweepPlan,
    hook: WebhookRequest,
    owner: str | None,
) -> SweepRecord:
    """Every cell's job accepted (accept_job), then the sweep stored; on any refusal or failure
    the jobs made so far are removed, and the problem goes to the client."""
    texts = check_cells(base, plan, len(styles), settings)  # every cell checked before a job is made
    check_room(store, settings, limits, owner, len(plan.cells))
    sweep_id = new_job_id()
    made: list[str] = []
    try:
        for values, text in zip(plan.cells, texts, strict=True):
            cell_styles = [styles[values[STYLE_AXIS]]] if STYLE_AXIS in values else styles
            record = accept_job(
                store, settings, celery, content, cell_styles, text, hook,
                owner=owner, budget=budget, limits=limits, blobs=blobs, sweep=sweep_id,
            )  # fmt: skip
            made.append(record.id)
        sweep = SweepRecord(
            id=sweep_id,
            owner=owner,
            created_at=utc_now(),
            axes=plan.axes,
            cells=[SweepCell(job=job_id, values=values) for job_id, values in zip(made, plan.cells, strict=True)],
        )
        sweeps.create(sweep)
    except BaseException:
        for job_id in made:
            discard(store, blobs, limits, owner, job_id)
        raise
    return sweep


def check_room(store: JobStore, settings: Settings, limits: TenantLimits, owner: str | None, count: int) -> None:
    """The queue's and the key's room for `count` more jobs, asked first, so that a sweep that
    cannot fit is refused before it makes any job (each job's own admission still decides)."""
    if store.queued_count() + count > settings.max_queued_jobs:
        raise Problem(
            "queue-full", f"the queue has no room for {count} more jobs; try again later", headers={"Retry-After": "30"}
        )
    allowed = limits.limits.active_jobs
    if allowed is not None:
        active = limits.active_jobs(tenant_of(owner))
        if active + count > allowed:
            raise limit_problem(Refusal("active", active, 30), limits.limits, owner is not None)


def discard(store: JobStore, blobs: BlobStore, limits: TenantLimits, owner: str | None, job_id: str) -> None:
    """Undo one accepted job of a sweep that was refused, as accept_job undoes its own."""
    with contextlib.suppress(redis.RedisError):
        store.forget(job_id)
    remove_objects(blobs, job_id)
    with contextlib.suppress(redis.RedisError):
        limits.release(tenant_of(owner), job_id)


def read_view(sweeps: SweepStore, record: SweepRecord) -> dict[str, Any]:
    return sweep_view(record, sweeps.cells(record))


def load_sweep(sweeps: SweepStore, sweep_id: str, caller: str | None) -> SweepRecord:
    """The caller's sweep, or 404: ids that cannot be ours never reach Redis, another key's
    sweep is answered as if it did not exist."""
    record = sweeps.get(sweep_id, caller) if is_job_id(sweep_id) else None
    if record is None:
        raise not_found("sweep")
    return record


@router.get(
    "/{sweep_id}",
    operation_id="get_sweep",
    response_model=SweepPublic,
    responses={200: {"description": "the sweep", "links": job_links("$response.body#/jobs/0/id")}}
    | problems(e404="no such sweep", e503=UNAVAILABLE),
)
def get_sweep(sweep_id: str, request: Request, caller: CallerDep) -> Response:
    """The sweep: its axes, each cell's job (id, values, status, URLs) and the counts by status."""
    sweeps = sweep_store(request)
    record = load_sweep(sweeps, sweep_id, caller)
    states = sweeps.cells(record)
    if all(state.status == "gone" for state in states):  # its jobs expired or were deleted one by one
        sweeps.delete(sweep_id)
        raise not_found("sweep")
    return json_response(sweep_view(record, states))


@router.get(
    "/{sweep_id}/sheet",
    operation_id="get_sweep_sheet",
    response_class=Response,
    responses={
        200: {
            "description": "the contact sheet: a tile per cell (the result, the latest snapshot while it runs, "
            "or a grey placeholder), labelled with the cell's values; two axes make rows and columns",
            "content": {SHEET_MEDIA_TYPE: BINARY, OCTET_STREAM: BINARY},
            "headers": SHEET_HEADERS,
        },
        304: {"description": "no cell changed since the ETag in If-None-Match", "headers": SHEET_HEADERS},
    }
    | problems(e404="no such sweep", e503=f"{UNAVAILABLE}; or this process is decoding as many pixels as it may"),
    openapi_extra={
        "parameters": [
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "an ETag this sheet answered with: 304 while no cell changed",
                "schema": {"type": "string"},
            }
        ]
    },
)
def get_sweep_sheet(sweep_id: str, request: Request, blobs: BlobsDep, caller: CallerDep) -> Response:
    """The contact sheet as JPEG; it fills in as the jobs end (revalidate it with its ETag)."""
    sweeps = sweep_store(request)
    record = load_sweep(sweeps, sweep_id, caller)
    states = sweeps.cells(record)
    etag = f'"{hashlib.blake2b(sheet_tag(record, states).encode(), digest_size=16).hexdigest()}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache", "Vary": "Accept"}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    budget: PixelBudget = request.app.state.decode_budget
    tiles = [tile_of(state, sweeps, blobs, budget) for state in states]
    media_type = image_media_type(request.headers.get("accept"), SHEET_MEDIA_TYPE)
    return Response(render_sheet(record.axes, tiles), media_type=media_type, headers=headers)


def tile_of(state: CellState, sweeps: SweepStore, blobs: BlobStore, budget: PixelBudget) -> Tile:
    """A cell's tile: its result once it has succeeded, else its latest snapshot, else nothing."""
    data = None
    if state.status == "succeeded":
        try:
            data = blobs.get(result_path(state.job_id))
        except BlobError as exc:
            log.warning("sweep sheet: job %s's result could not be read: %s", state.job_id, exc)
    if data is None and state.snapshots:
        data = sweeps.snapshot(state.job_id, state.snapshots[-1])
    fraction = state.iteration / state.total if state.total else 0.0
    picture = thumbnail(data, budget) if data else None
    return Tile(state.values, state.status, fraction, picture)


@router.post(
    "/{sweep_id}/cancel",
    status_code=202,
    operation_id="cancel_sweep",
    response_model=SweepPublic,
    responses=problems(e404="no such sweep", e503=UNAVAILABLE),
)
def cancel_sweep(
    sweep_id: str, request: Request, store: StoreDep, celery: CeleryDep, blobs: BlobsDep, caller: CallerDep
) -> Response:
    """Cancel every job of the sweep that has not ended: the queued ones never start, the running
    ones stop within a second. Jobs that have ended keep their results."""
    sweeps = sweep_store(request)
    record = load_sweep(sweeps, sweep_id, caller)
    if not all(state.final for state in sweeps.cells(record)):
        record = sweeps.request_cancel(record)
    for cell in record.cells:
        outcome, _ = store.cancel(cell.job)
        if outcome == "canceled":  # as POST /jobs/{id}/cancel does for a queued job
            store.refresh_expiry(cell.job)
            remove_inputs(blobs, store.get(cell.job))
            announce(store, cell.job, "completed", celery=celery)
    return json_response(read_view(sweeps, record), 202)


@router.delete(
    "/{sweep_id}",
    status_code=204,
    operation_id="delete_sweep",
    response_class=Response,
    responses={204: {"description": "deleted: the sweep, every job of it, their snapshots and pictures are gone"}}
    | problems(e404="no such sweep", e503=UNAVAILABLE),
)
def delete_sweep(sweep_id: str, request: Request, store: StoreDep, blobs: BlobsDep, caller: CallerDep) -> Response:
    """Delete the sweep and every job of it, as DELETE /jobs/{id} deletes one (running ones stop
    within a second). Answers 204 with no body."""
    sweeps = sweep_store(request)
    record = load_sweep(sweeps, sweep_id, caller)
    for cell in record.cells:
        store.delete(cell.job)  # False for a job already gone; its objects may still be there
        remove_objects(blobs, cell.job)
    sweeps.delete(sweep_id)
    return Response(status_code=204)
