"""Dependencies the routes declare: the settings, the job store and the Celery app of this process."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from api.problems import not_found
from worker.settings import Settings
from worker.state import JobRecord, JobStore, is_job_id


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _celery(request: Request) -> Celery:
    return request.app.state.celery


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[JobStore, Depends(_store)]
CeleryDep = Annotated[Celery, Depends(_celery)]


def load_job(job_id: str, store: JobStore) -> JobRecord:
    """The job, or 404: ids that cannot be ours never reach Redis."""
    record = store.get(job_id) if is_job_id(job_id) else None
    if record is None:
        raise not_found()
    return record
