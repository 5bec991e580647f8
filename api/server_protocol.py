"""uvicorn's HTTP/1.1 protocol (httptools) with the two limits it lacks: the size of a request's
headers and the time they may take to arrive.

uvicorn reads headers for as long and as large as a client sends them: four connections each
sending an endless header held 460 MB, and a connection that sent half a header stayed open for
good (slowloris). Here a request whose headers pass NST_MAX_HEADER_BYTES is answered 431, and a
connection that has not sent complete headers NST_HEADER_TIMEOUT_SECONDS after it opened (or
after its first byte of the next request) is answered 408; both then close. `nst api` runs with
this class (`uvicorn --http api.server_protocol:GuardedHttpToolsProtocol` does the same).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.problems import PROBLEM_MEDIA_TYPE
from worker.problem_types import problem_type_uri
from worker.settings import get_settings

log = logging.getLogger("uvicorn.error")

PROTOCOL_PATH = "api.server_protocol:GuardedHttpToolsProtocol"
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def problem_answer(status: int, kind: str, title: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer with a problem+json body that closes the connection."""
    body = json.dumps({"type": problem_type_uri(kind), "title": title, "status": status, "detail": detail}).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % (
        status,
        REASONS[status],
        PROBLEM_MEDIA_TYPE.encode(),
        len(body),
    )
    return head + body


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a cap on header bytes and a deadline for them, per request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout_seconds
        self._awaiting_headers = True  # between requests and while a request's headers come in
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._awaiting_headers:
            super().data_received(data)
            return
        if self._header_timer is None:
            self._arm_header_timer()  # the first byte of the next request on a kept-alive connection
        self._header_bytes += len(data)
        super().data_received(data)
        # Past the limit with the headers still incomplete: httptools would keep buffering them.
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes and not self.transport.is_closing():
            detail = f"the request's headers are larger than {self.max_header_bytes} bytes"
            self._refuse(431, "headers-too-large", "Request headers too large", detail)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True  # the next request's headers count from zero
        self._header_bytes = 0

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._on_header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _on_header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or not self._awaiting_headers:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_header_timer()  # an answer is still being sent (an event stream): not idle
            return
        detail = f"the request's headers did not arrive within {self.header_timeout:g} s"
        self._refuse(408, "header-timeout", "Request header timeout", detail)

    def _refuse(self, status: int, kind: str, title: str, detail: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("%s: %s; connection closed", client, detail)
        self._cancel_header_timer()
        self.transport.write(problem_answer(status, kind, title, detail))
        self.transport.close()
