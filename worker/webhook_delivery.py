"""One webhook delivery attempt: sign the message (Standard Webhooks), check the address again,
POST to that very address, and say what came of it. No Celery here: jobs/webhooks.py decides
what an attempt's verdict means for the next one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import httpx
from standardwebhooks import Webhook

from jobs.url_safety import CheckedUrl, Unresolvable, UnsafeUrl, check_url

TIMEOUT_SECONDS = 5.0  # to connect, and between bytes sent or received
MAX_ADDRESSES = 3  # a host with many addresses: try this many before calling it unreachable
USER_AGENT = "neural-style-service-webhooks"

# delivered: 2xx. retry: may pass (5xx, 408, 429, a timeout, no connection, a name that does not
# resolve now). failed: will not pass (a 3xx, which is not followed, or another 4xx). refused:
# the URL now leads to an address webhooks may not go to.
Verdict = Literal["delivered", "retry", "failed", "refused"]


@dataclass(frozen=True)
class Attempt:
    verdict: Verdict
    detail: str  # for the log: "HTTP 500", "timed out", ...


def signed_headers(secret: str, message_id: str, payload: str, now: datetime | None = None) -> dict[str, str]:
    """The Standard Webhooks headers for one attempt: the id is the message's (the same on every
    retry, so receivers can deduplicate), the timestamp and signature are the attempt's."""
    now = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, payload),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


def verdict_for(status: int) -> Verdict:
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    if 300 <= status < 500:
        return "failed"  # a redirect is not followed (it could lead anywhere), a client error will not pass
    return "retry"


def deliver(url: str, message_id: str, payload: str, secret: str, *, allow_private: bool = False) -> Attempt:
    """One attempt to POST `payload` to `url`."""
    try:
        checked = check_url(url, allow_private=allow_private)
    except Unresolvable as exc:
        return Attempt("retry", str(exc))
    except UnsafeUrl as exc:
        return Attempt("refused", str(exc))
    headers = signed_headers(secret, message_id, payload)
    body = payload.encode()
    unreachable = "no address"
    for address in checked.addresses[:MAX_ADDRESSES]:
        try:
            status = post_to(checked, address, body, headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            unreachable = f"{address}: {type(exc).__name__}: {exc}"
            continue  # the next address of the host, if it has one
        except httpx.TimeoutException:
            return Attempt("retry", "timed out")
        except httpx.HTTPError as exc:
            return Attempt("retry", f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # a URL httpx cannot send, say: it will not pass later either
            return Attempt("failed", f"{type(exc).__name__}: {exc}")
        return Attempt(verdict_for(status), f"HTTP {status}")
    return Attempt("retry", f"could not connect: {unreachable}")


def post_to(checked: CheckedUrl, address: str, body: bytes, headers: dict[str, str]) -> int:
    """POST to `address` (one the check passed) with the URL's Host header and TLS name, so the
    request goes exactly there whatever the name resolves to by now; the answer's status.

    A fresh client each time: a pooled connection to the same address could carry another
    name's TLS session. No proxies from the environment (they would connect elsewhere), no
    redirects; the answer's body is not read (a receiver cannot make us download anything)."""
    extensions = {"sni_hostname": checked.host} if checked.scheme == "https" else {}
    with (
        httpx.Client(timeout=TIMEOUT_SECONDS, follow_redirects=False, trust_env=False) as client,
        client.stream(
            "POST",
            checked.url_for(address),
            content=body,
            headers={**headers, "host": checked.host_header},
            extensions=extensions,
        ) as response,
    ):
        return response.status_code
