"""The webhook delivery task, run by `nst webhooks` (worker/webhook_worker.py): one attempt per
message, a retry a new message on the same queue (jobs/webhooks.py says when and why)."""

from __future__ import annotations

import logging
import random
from functools import lru_cache
from urllib.parse import urlsplit

import redis
from celery import Task, shared_task

from core.logs import job_context
from jobs.settings import Settings, get_settings
from jobs.webhooks import JITTER, MAX_RETRIES, WEBHOOK_QUEUE, WEBHOOK_TASK, retry_delay
from worker.webhook_delivery import Attempt, deliver

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _metrics_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)


def _count(settings: Settings, outcome: str) -> None:
    """One attempt's outcome in the service's metrics (jobs/telemetry.py); best effort."""
    from jobs.telemetry import record_webhook_delivery

    try:
        record_webhook_delivery(_metrics_client(settings.redis_url), outcome)
    except redis.RedisError as exc:
        log.warning("webhook delivery not counted: %s", exc)


@shared_task(bind=True, name=WEBHOOK_TASK, ignore_result=True)  # type: ignore[untyped-decorator]  # Celery ships no types
def deliver_webhook(task: Task, job_id: str, event: str, url: str, message_id: str, payload: str) -> None:
    """One attempt; a retry is a new message with a countdown, on this same queue."""
    with job_context(job_id):  # the records of this attempt carry the job id
        _deliver(task, job_id, event, url, message_id, payload)


def _deliver(task: Task, job_id: str, event: str, url: str, message_id: str, payload: str) -> None:
    settings = get_settings()
    retries = task.request.retries
    if settings.webhook_secret is None:  # set where the API runs but not here: fixable, so retried
        attempt = Attempt("retry", "NST_WEBHOOK_SECRET is not set where the webhook worker runs")
    else:
        secret = settings.webhook_secret.get_secret_value()
        attempt = deliver(url, message_id, payload, secret, allow_private=settings.webhook_allow_private)
    outcome: str = attempt.verdict
    if attempt.verdict == "retry":
        outcome = "retrying" if retries < MAX_RETRIES else "failed"
    _count(settings, outcome)
    where = urlsplit(url).hostname  # not the whole URL: its path or query may hold a token
    tried = f"attempt {retries + 1}"
    if outcome == "delivered":
        log.info("job %s: %s webhook to %s delivered (%s, %s)", job_id, event, where, attempt.detail, tried)
        return
    if outcome != "retrying":
        log.warning("job %s: %s webhook to %s %s: %s (%s)", job_id, event, where, outcome, attempt.detail, tried)
        return
    delay = retry_delay(retries, settings.webhook_retry_base_seconds, random.uniform(-JITTER, JITTER))
    log.info("job %s: %s webhook to %s: %s (%s); again in %.1f s", job_id, event, where, attempt.detail, tried, delay)
    raise task.retry(countdown=delay, max_retries=MAX_RETRIES, queue=WEBHOOK_QUEUE)
