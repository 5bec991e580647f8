"""`GET /jobs/{id}/timelapse`: the job's snapshots as an animated WebP (api/timelapse.py), ending
with the result once the job has succeeded.

Building one decodes up to a hundred snapshots and encodes as many frames: seconds of CPU. So it
is built in a worker thread, a few at a time per process, once per state of the job: its ETag
names the snapshots it shows and whether the result ends it, a client that has it gets a 304
without any work, and the latest builds are kept in memory (a bounded LRU) for the next client.
Two requests for the same timelapse at once share one build.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from api import timelapse
from api.auth import CallerDep
from api.byte_ranges import none_match
from api.deps import BlobsDep, ReaderDep, load_record
from api.openapi import IMAGE_PARAMETERS, image_media_type, image_responses, problems
from api.problems import Problem
from api.routes.images import IMMUTABLE, UNAVAILABLE_OR_STORAGE, bytes_answer, storage_unavailable
from jobs.blobs import BlobError, BlobStore, result_path
from jobs.reader import JobReader
from jobs.record import TERMINAL

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

CACHE_BYTES = 64 * 1024 * 1024
READ_AT_ONCE = 10  # snapshot reads in flight for one build
BUILDS_AT_ONCE = 2  # per process: the rest wait their turn (the thread pool serves everything else)
VERSION = "1"  # in the ETag: a change to how timelapses are made changes every ETag
TIMELAPSE_DOC = (
    "an animated WebP of the job's snapshots in order (at most 100, picked evenly; frames at most the snapshots' "
    f"size and {timelapse.MAX_SIDE} px on the long side), ending with the result, held longer, once the job has "
    "succeeded"
)


class TimelapseCache:
    """The latest timelapses built by this process, least recently used out first, at most
    `max_bytes` of them; and the builds under way, so that one build serves every request for it."""

    def __init__(self, max_bytes: int = CACHE_BYTES, builds_at_once: int = BUILDS_AT_ONCE) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._building: dict[str, asyncio.Future[bytes]] = {}
        self._builds = asyncio.Semaphore(builds_at_once)

    async def get(self, key: str, build: Callable[[], Awaitable[bytes]]) -> bytes:
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return kept
        task = self._building.get(key)
        if task is None:
            task = asyncio.ensure_future(self._build(key, build))
            self._building[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # Shielded: a client that leaves does not cancel a build that others (or the next) want.
        return await asyncio.shield(task)

    async def _build(self, key: str, build: Callable[[], Awaitable[bytes]]) -> bytes:
        async with self._builds:
            data = await build()
        if len(data) <= self.max_bytes:
            self._kept[key] = data
            self._size += len(data)
            while self._size > self.max_bytes:
                _, dropped = self._kept.popitem(last=False)
                self._size -= len(dropped)
        return data

    def _finished(self, key: str, task: asyncio.Future[bytes]) -> None:
        self._building.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: a failure whose clients all left is not logged as lost


def cache_of(request: Request) -> TimelapseCache:
    """The process's cache, made on first use."""
    state = request.app.state
    cache = getattr(state, "timelapses", None)
    if cache is None:
        cache = state.timelapses = TimelapseCache()
    return cast(TimelapseCache, cache)


def timelapse_etag(job_id: str, iterations: list[int], with_result: bool) -> str:
    """What the timelapse shows names it: a snapshot of an iteration and a result never change."""
    text = f"{VERSION}:{job_id}:{','.join(map(str, iterations))}:{int(with_result)}"
    return f'"{hashlib.blake2b(text.encode(), digest_size=16).hexdigest()}"'


async def read_snapshots(reader: JobReader, job_id: str, iterations: list[int]) -> list[bytes]:
    """The snapshots' JPEGs in order, leaving out any that has expired: READ_AT_ONCE reads at a
    time (ten round trips for a hundred, on as many connections at most)."""
    found: list[bytes | None] = []
    for start in range(0, len(iterations), READ_AT_ONCE):
        batch = iterations[start : start + READ_AT_ONCE]
        found += await asyncio.gather(*(reader.snapshot(job_id, iteration) for iteration in batch))
    return [data for data in found if data is not None]


async def read_result(reader: JobReader, blobs: BlobStore, record: dict[str, Any]) -> bytes | None:
    """The result's PNG (None if it has expired): from the blob store, or from Redis for a job of
    the previous version."""
    if not record.get("blobs"):
        return await reader.result(record["id"])
    try:
        return await run_in_threadpool(blobs.get, result_path(record["id"]))
    except BlobError as exc:
        raise storage_unavailable(exc) from exc


@router.get(
    "/{job_id}/timelapse",
    operation_id="get_timelapse",
    response_class=Response,
    responses=image_responses("image/webp", TIMELAPSE_DOC)
    | problems(
        e404="no such job, or its snapshots have expired",
        e409="the job has no snapshot yet (`no-snapshot-yet`)",
        e416="the Range header asks for bytes past the timelapse's end",
        e501="this server's Pillow cannot write animated WebP (`timelapse-unsupported`)",
        e503=UNAVAILABLE_OR_STORAGE,
    ),
    openapi_extra={"parameters": IMAGE_PARAMETERS},
)
async def get_timelapse(
    job_id: str, reader: ReaderDep, blobs: BlobsDep, request: Request, caller: CallerDep
) -> Response:
    """The job's snapshots as an animated WebP, ending with the result once it has succeeded; made
    at most once per state of the job (ETag, 304), so that a finished job's is cheap to ask again."""
    record = await load_record(job_id, reader, caller)
    if not timelapse.supported():
        raise Problem("timelapse-unsupported", "this server's Pillow cannot write animated WebP (no libwebp animation)")
    snapshots: list[int] = record.get("snapshots", [])
    if not snapshots:
        raise Problem("no-snapshot-yet", f"the job is {record['status']} and has no snapshot yet")
    with_result = record["status"] == "succeeded"
    iterations = timelapse.pick(snapshots, timelapse.MAX_FRAMES - int(with_result))
    etag = timelapse_etag(job_id, iterations, with_result)
    media_type = image_media_type(request.headers.get("accept"), "image/webp")
    headers = {
        # A finished job's timelapse is final; a running one's grows: revalidated (a 304 while the same).
        "Cache-Control": IMMUTABLE if record["status"] in TERMINAL else "no-cache",
        "Content-Disposition": f'inline; filename="{job_id}-timelapse.webp"',
        "Vary": "Accept",
    }
    if none_match(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers | {"ETag": etag, "Accept-Ranges": "bytes"})

    async def build() -> bytes:
        images = await read_snapshots(reader, job_id, iterations)
        if not images:
            raise Problem("not-found", "the job's snapshots have expired")
        result = await read_result(reader, blobs, record) if with_result else None
        data, frames = await run_in_threadpool(timelapse.render, images, result)
        log.info("job %s: timelapse of %d frames, %d bytes", job_id, frames, len(data))
        return data

    data = await cache_of(request).get(etag, build)
    return bytes_answer(data, etag, request, media_type, headers)
