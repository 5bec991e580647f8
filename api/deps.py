"""Dependencies the routes declare: the settings, the job store (writes), the reader (async reads),
the event hub, the blob store and the Celery app of this process."""

from __future__ import annotations

from typing import Annotated, Any, cast

from celery import Celery
from fastapi import Depends, Request

from api.event_hub import EventHub
from api.problems import not_found
from jobs.blobs import BlobStore
from jobs.reader import JobReader
from jobs.settings import Settings
from jobs.store import JobStore


async def _settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


async def _store(request: Request) -> JobStore:
    return cast(JobStore, request.app.state.store)


async def _reader(request: Request) -> JobReader:
    return cast(JobReader, request.app.state.reader)


async def _hub(request: Request) -> EventHub:
    return cast(EventHub, request.app.state.hub)


async def _blobs(request: Request) -> BlobStore:
    return cast(BlobStore, request.app.state.blobs)


async def _celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
ReaderDep = Annotated[JobReader, Depends(_reader)]
HubDep = Annotated[EventHub, Depends(_hub)]
CeleryDep = Annotated[Celery, Depends(_celery)]
BlobsDep = Annotated[BlobStore, Depends(_blobs)]


async def load_record(job_id: str, reader: JobReader, owner: str | None) -> dict[str, Any]:
    """The job's decoded record, or 404: ids that cannot be ours never reach Redis, and another
    API key's job is answered as if it did not exist (`owner`: the caller, api.auth.CallerDep)."""
    record = await reader.record(job_id, owner)
    if record is None:
        raise not_found()
    return record
