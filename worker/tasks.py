"""The Celery task: message in, `run_job` called, nothing else (Celery's own advice)."""

from __future__ import annotations

from celery import shared_task

from jobs.queue import TASK_NAME
from worker.runner import run_job


@shared_task(name=TASK_NAME, ignore_result=True)  # type: ignore[untyped-decorator]  # Celery ships no types
def stylize_job(job_id: str) -> None:
    run_job(job_id)
