"""The queue: the Celery app, made on first use from the settings (not at import, not from
os.environ), and the task and queue names that a job's turn is sent with."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from jobs.settings import Settings, get_settings

TASK_NAME = "nst.stylize"
QUEUE_NAME = "nst"


def send_turn(app: Celery, job_id: str) -> None:
    """Queue a turn for a queued job: the worker that gets it runs the next job in fair order
    (jobs/fair_queue.py), this one or another. The API does it at submit, the reaper at requeue."""
    app.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=QUEUE_NAME)


@lru_cache(maxsize=1)
def get_celery_app() -> Celery:
    return make_celery_app(get_settings())


def make_celery_app(settings: Settings) -> Celery:
    """The app that sends tasks (the API, the heartbeat, webhook announcements); a worker process
    adds the module of the tasks it runs to `app.conf.include` before it starts."""
    app = Celery("nst", broker=settings.redis_url, backend=settings.redis_url)
    app.conf.update(
        task_default_queue=QUEUE_NAME,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=settings.job_ttl_seconds,
        # Long GPU jobs: acknowledge after the job, hand a job back when its worker
        # dies, take one job at a time, and keep Redis from redelivering a job that still runs.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        result_backend_transport_options={"visibility_timeout": settings.visibility_timeout},
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
