"""Webhooks: a job's events POSTed to the URL it gave at submit, signed, from a queue of their own.

Where an event happens (the runner when a job starts, writes a snapshot or ends; the API when it
cancels a queued job; the reaper when it gives a job up), `announce` reads the job, builds the
message (the job as `GET /jobs/{id}` shows it) and queues a delivery task on WEBHOOK_QUEUE. A
light Celery worker with a thread pool (`nst webhooks`, worker/webhook_worker.py) consumes that
queue, so a slow receiver never holds a GPU job; a GPU worker does not consume it.

A delivery that fails for a reason that may pass (5xx, 408, 429, a timeout, no connection) is
tried again after 4, 8, 16 … 2048 s (NST_WEBHOOK_RETRY_BASE_SECONDS doubling, 10 retries, about
an hour in all), always with the same `webhook-id` so that receivers can deduplicate; a 3xx (not
followed) or another 4xx is final. Deliveries are at least once.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any, Literal, get_args

from celery import Celery

from jobs.keys import job_key, webhook_sent_key
from jobs.record import TERMINAL, decode_value, utc_now
from jobs.settings import Settings, get_settings
from jobs.store import JobStore
from jobs.view import job_view

log = logging.getLogger(__name__)

WEBHOOK_QUEUE = "nst-webhooks"
WEBHOOK_TASK = "nst.webhook"
WebhookEvent = Literal["started", "snapshot", "completed"]
WEBHOOK_EVENTS: tuple[str, ...] = get_args(WebhookEvent)
DEFAULT_EVENTS: tuple[str, ...] = ("completed",)
MAX_RETRIES = 10
# A retry is a message with an ETA that the webhook worker holds unacknowledged until then; one
# held past the broker's visibility timeout would be delivered a second time. The
# smallest visibility timeout the settings allow is 3610 s (job timeout 10 s + 3600).
MAX_DELAY_SECONDS = 2400.0
JITTER = 0.1  # +-10%: receivers that failed together are not all retried in the same second


def parse_events(values: Iterable[str]) -> list[str]:
    """`["started,completed", "snapshot"]` -> the events named, each once, in WEBHOOK_EVENTS'
    order; ValueError for an unknown name or none at all."""
    named = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(named - set(WEBHOOK_EVENTS))
    if unknown:
        raise ValueError(f"unknown event {', '.join(map(repr, unknown))}; choose from {', '.join(WEBHOOK_EVENTS)}")
    if not named:
        raise ValueError(f"name at least one of {', '.join(WEBHOOK_EVENTS)}")
    return [event for event in WEBHOOK_EVENTS if event in named]


def retry_delay(retries: int, base_seconds: float, jitter: float = 0.0) -> float:
    """Seconds before retry number `retries` + 1: base x 2^retries, times (1 + jitter), capped."""
    return min(base_seconds * 2.0**retries * (1 + jitter), MAX_DELAY_SECONDS)


def message(event: str, job: dict[str, Any]) -> str:
    """The body of a delivery, as Standard Webhooks suggests: type, timestamp, data."""
    return json.dumps({"type": f"job.{event}", "timestamp": utc_now(), "data": job}, separators=(",", ":"))


def announce(
    store: JobStore,
    job_id: str,
    event: WebhookEvent,
    *,
    settings: Settings | None = None,
    celery: Celery | None = None,
) -> bool:
    """Queue a delivery of `event` if the job asked for it; True if one was queued. `started`
    and `completed` go out once a job (however often it is called: a resumed run, a cancel that
    races the end), `completed` only once the job is final, `snapshot` at most once every
    NST_WEBHOOK_SNAPSHOT_INTERVAL_SECONDS. It never raises: a webhook must not fail a job."""
    try:
        return _announce(store, job_id, event, settings or get_settings(), celery)
    except Exception as exc:  # Redis or the broker away: the job goes on, the event is lost
        log.warning("job %s: %s webhook not queued: %s", job_id, event, exc)
        return False


def _announce(store: JobStore, job_id: str, event: WebhookEvent, settings: Settings, celery: Celery | None) -> bool:
    url_field, events_field = store.redis.hmget(job_key(job_id), ["webhook", "webhook_events"])
    url = decode_value(url_field) if url_field else None
    if not url or event not in (decode_value(events_field) if events_field else []):
        return False  # most jobs: one small read and nothing else
    record = store.get(job_id)
    if record is None or (event == "completed" and record.status not in TERMINAL):
        return False
    guard = webhook_sent_key(job_id, event)
    if event == "snapshot":
        interval_ms = max(1, int(settings.webhook_snapshot_interval_seconds * 1000))
        first = store.redis.set(guard, "1", nx=True, px=interval_ms)
    else:
        first = store.redis.set(guard, "1", nx=True, ex=store.ttl)
    if not first:
        return False
    payload = message(event, job_view(record.model_dump(), None))
    message_id = f"msg_{secrets.token_hex(16)}"
    if celery is None:
        from jobs.queue import get_celery_app

        celery = get_celery_app()
    try:
        celery.send_task(WEBHOOK_TASK, args=[job_id, event, url, message_id, payload], queue=WEBHOOK_QUEUE)
    except Exception:
        store.redis.delete(guard)  # a later call may queue it after all
        raise
    return True
