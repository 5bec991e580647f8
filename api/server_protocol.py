"""uvicorn's HTTP/1.1 protocol (httptools) with the two limits it lacks: the size of a request's
headers and the time they may take to arrive.

uvicorn reads headers for as long and as large as a client sends them: four connections each
sending an endless header held 460 MB, and a connection that sent half a header stayed open for
good (slowloris). Here a request whose headers pass NST_MAX_HEADER_BYTES is answered 431 (counted
as they are parsed, and as raw bytes while they are incomplete, so the parser never buffers much
more), and a connection that has not sent complete headers NST_HEADER_TIMEOUT_SECONDS after its
first byte of a request is answered 408; both then close. A connection that sends nothing at all
in that time is closed without an answer (a browser's preconnected socket must not read a 408 as
the answer to the request it sends later). `nst api` runs with this class (`uvicorn --http
api.server_protocol:GuardedHttpToolsProtocol` does the same).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.problems import PROBLEM_MEDIA_TYPE
from api.security import SECURITY_HEADER_LINES
from jobs.problems import problem_body
from jobs.settings import get_settings

log = logging.getLogger("uvicorn.error")

PROTOCOL_PATH = "api.server_protocol:GuardedHttpToolsProtocol"
REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def problem_answer(kind: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer with a problem+json body that closes the connection."""
    problem = problem_body(kind, detail)
    status = problem["status"]
    body = json.dumps(problem).encode()
    head = b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])
    head += b"content-type: %s\r\ncontent-length: %d\r\n" % (PROBLEM_MEDIA_TYPE.encode(), len(body))
    head += b"connection: close\r\n" + SECURITY_HEADER_LINES + b"\r\n"
    return head + body


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request that was answered already."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a cap on header bytes and a deadline for them, per request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.header_timeout_seconds
        self._awaiting_headers = True  # between requests and while a request's headers come in
        self._header_bytes = 0  # raw bytes received since the request began
        self._parsed_header_bytes = 0  # its request line and headers, as parsed
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered and closing: the rest of what it sends is not read
        if self._awaiting_headers:
            if self._header_timer is None:
                self._arm_header_timer()  # the first byte of the next request on a kept-alive connection
            self._header_bytes += len(data)
        self._feed(data)
        # Past the limit with the headers still incomplete: httptools would keep buffering them.
        if self._awaiting_headers and self._header_bytes > self.max_header_bytes and not self._refused:
            detail = f"the request's headers are larger than {self.max_header_bytes} bytes"
            self._refuse("headers-too-large", detail)

    def _feed(self, data: bytes) -> None:
        """uvicorn's own data_received, but a request we stopped on purpose is not reported as an
        invalid one."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_url(self, url: bytes) -> None:
        self._parsed_header_bytes += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed_header_bytes += len(name) + len(value) + 4  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        if self._parsed_header_bytes > self.max_header_bytes:  # came whole within one read
            detail = f"the request's headers are larger than {self.max_header_bytes} bytes"
            self._refuse("headers-too-large", detail)
            raise _Refused  # the request never reaches the app; uvicorn stops parsing
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True  # the next request's headers count from zero
        self._header_bytes = 0
        self._parsed_header_bytes = 0

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
        if self._header_bytes == 0:
            self.transport.close()  # it never asked anything: nothing to answer
            return
        detail = f"the request's headers did not arrive within {self.header_timeout:g} s"
        self._refuse("header-timeout", detail)

    def _refuse(self, kind: str, detail: str) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        log.info("%s: %s; connection closed", client, detail)
        self._refused = True
        self._cancel_header_timer()
        # Mid-answer to an earlier request on this connection (pipelined), an answer would be cut
        # into it: close only.
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(problem_answer(kind, detail))
        self.transport.close()
