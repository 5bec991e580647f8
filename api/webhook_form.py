"""The `webhook` and `webhook_events` fields of `POST /jobs`, checked before anything is stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import FormData

from api.multipart import form_text
from api.problems import validation_problem
from jobs.settings import Settings
from jobs.url_safety import UnsafeUrl, check_url, parse_url
from jobs.webhooks import DEFAULT_EVENTS, parse_events


@dataclass(frozen=True)
class WebhookRequest:
    """What the form said, unchecked: the URL (None: no webhook) and each webhook_events value."""

    url: str | None = None
    events: list[str] = field(default_factory=list)


async def read_webhook_fields(form: FormData) -> WebhookRequest:
    url = await form_text(form, "webhook")
    events = form.getlist("webhook_events")
    if any(not isinstance(value, str) for value in events):
        raise validation_problem([{"field": "webhook_events", "message": "must be text, not a file"}])
    return WebhookRequest(url, [value for value in events if isinstance(value, str)])


def check_webhook(request: WebhookRequest, settings: Settings) -> dict[str, Any]:
    """The job record's webhook fields ({} without a webhook), or a 422 problem naming the field.
    Blocking (the host is resolved): call it off the event loop."""
    if request.url is None:
        if request.events:
            raise validation_problem([{"field": "webhook_events", "message": "give a webhook URL as well"}])
        return {}
    try:
        events = parse_events(request.events) if request.events else list(DEFAULT_EVENTS)
    except ValueError as exc:
        raise validation_problem([{"field": "webhook_events", "message": str(exc)}]) from exc
    url = request.url.strip()
    try:
        parse_url(url)
        if settings.webhook_secret is None:
            raise UnsafeUrl("this server sends no webhooks: its operator has not set NST_WEBHOOK_SECRET")
        check_url(url, allow_private=settings.webhook_allow_private)
    except UnsafeUrl as exc:
        raise validation_problem([{"field": "webhook", "message": str(exc)}]) from exc
    return {"webhook": url, "webhook_events": events}
