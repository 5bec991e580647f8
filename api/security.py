"""What a browser may do with this service, checked on every request in one pure ASGI middleware:

- `Host` must name this service: an IP address (a browser sends one only when it was given that
  address: no DNS rebinding goes through one), `localhost` or a `*.localhost` name, or a name in
  NST_ALLOWED_HOSTS. Anything else is 421: a page on attacker.example whose name was rebound to
  127.0.0.1 cannot read the service's jobs.
- A request that may change something (any method but GET, HEAD and OPTIONS) sent by a page of
  another origin is 403 unless NST_CORS_ORIGINS lists that origin: in the open mode (no API
  keys) a form on any web page could otherwise submit and cancel jobs.
- Every answer carries security headers: no MIME sniffing, no referrer, no framing by another
  site, and a Content-Security-Policy (the routes that serve HTML set their own; everything else
  gets one that allows nothing).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.problems import PROBLEM_MEDIA_TYPE
from jobs.problems import problem_body

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# An answer that is not a page (JSON, images, event streams) may load nothing and be framed by no one.
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)
_CSP = b"content-security-policy"
# For answers made outside this middleware (a 500, the server protocol's 408 and 431): all of them.
ALL_SECURITY_HEADERS = {
    name.decode(): value.decode() for name, value in (*SECURITY_HEADERS, (_CSP, DEFAULT_CSP.encode()))
}
SECURITY_HEADER_LINES = b"".join(
    b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in ALL_SECURITY_HEADERS.items()
)


def inline_hashes(html: str, tag: str) -> str:
    """The CSP sources ('sha256-...') that allow each inline <script> or <style> of a page we
    generate (FastAPI's Swagger UI and ReDoc pages), and nothing else inline."""
    found = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()}'" for text in found)


class HostRule:
    """Which `Host` names this service answers to (the port is not part of the check)."""

    def __init__(self, allowed: Iterable[str]) -> None:
        names = {name.strip().lower().rstrip(".") for name in allowed if name.strip()}
        self.any = "*" in names
        self.exact = {name for name in names if not name.startswith("*.")}
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))  # ".example.com"

    def allows(self, host: str) -> bool:
        if self.any:
            return True
        name = host_name(host)
        if name is None:
            return False
        if name == "localhost" or name.endswith(".localhost") or is_ip_address(name):
            return True
        return name in self.exact or name.endswith(self.suffixes)

    def describe(self) -> str:
        named = sorted(self.exact) + sorted(f"*{suffix}" for suffix in self.suffixes)
        return ", ".join(["IP addresses", "localhost", *named])


def host_name(host: str) -> str | None:
    """`example.com:8000` -> `example.com`, `[::1]:80` -> `::1`; None for what no client sends."""
    host = host.strip().lower()
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d{1,5}", rest)):
            return None
        return name
    name, _, port = host.partition(":")
    if port and not (port.isascii() and port.isdigit()):
        return None
    return name.rstrip(".") or None


def is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def same_origin(origin: str, host: str) -> bool:
    """Whether a browser's `Origin` names the host (and port) the request was sent to."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    default = {"http": ":80", "https": ":443"}[parts.scheme]
    netloc = parts.netloc.lower()
    host = host.lower()
    return netloc == host or netloc + default == host or netloc == host + default


class RequestGuard:
    """The Host check, the cross-origin check and the security headers (see the module's text)."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], cors_origins: Iterable[str]) -> None:
        self.app = app
        self.hosts = HostRule(allowed_hosts)
        self.origins = {origin.strip().rstrip("/").lower() for origin in cors_origins if origin.strip()}
        self.any_origin = "*" in self.origins  # NST_CORS_ORIGINS=*, as CORSMiddleware reads it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = None
        for name, value in scope["headers"]:  # a plain loop: this runs on every request
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if host is not None and not self.hosts.allows(host):
            answers = self.hosts.describe()
            detail = f"this server does not answer to {host[:100]!r}; it answers to {answers} (NST_ALLOWED_HOSTS)"
            await refuse(send, "unknown-host", detail, scope)
            return
        if origin is not None and scope["method"] not in SAFE_METHODS and not self._origin_allowed(origin, host):
            detail = (
                f"a page from {origin[:100]!r} may not send {scope['method']} requests to this service; "
                "NST_CORS_ORIGINS lists the origins that may"
            )
            await refuse(send, "cross-origin", detail, scope)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers.extend(pair for pair in SECURITY_HEADERS if pair[0] not in names)
                if _CSP not in names:
                    headers.append((_CSP, DEFAULT_CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _origin_allowed(self, origin: str, host: str | None) -> bool:
        origin = origin.strip()
        if self.any_origin:
            return True
        return (host is not None and same_origin(origin, host)) or origin.rstrip("/").lower() in self.origins


async def refuse(send: Send, kind: str, detail: str, scope: Scope) -> None:
    problem = problem_body(kind, detail, instance=scope["path"])
    status = problem["status"]
    body = json.dumps(problem).encode()
    headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
    headers += [*SECURITY_HEADERS, (_CSP, DEFAULT_CSP.encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
