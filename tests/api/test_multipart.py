"""Reading the `POST /jobs` form (api/multipart.py): parsed in a worker thread, fed a MiB of the
body at a time, with every limit and error of Starlette's own parser kept. Each case runs through
both parsers and must come out the same: the form's items, or the same problem."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from api.multipart import FEED_BYTES, MAX_TEXT_FIELD_BYTES, FileTooLarge, LimitedMultiPartParser, read_job_form
from api.problems import Problem
from jobs.settings import Settings

SETTINGS = Settings(max_upload_bytes=2_500_000, max_styles=2)  # at most 4 files: content, 2 styles, params
BIG = os.urandom(2_400_000)  # past FEED_BYTES and Starlette's 1 MB in-memory spool: on disk, in three feeds
SMALL = b"\x89PNG" + os.urandom(5000)

Files = list[tuple[str, Any]]


def encoded(files: Files, data: dict[str, Any] | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://api/jobs", files=files, data=data)
    return request.read(), request.headers["content-type"]


def request_of(body: bytes, content_type: str, chunk: int = 65536, leave_after: int | None = None) -> Request:
    """A request whose body arrives in `chunk`-byte messages; `leave_after` bytes: then the client leaves."""
    sent = 0

    async def receive() -> Message:
        nonlocal sent
        if leave_after is not None and sent >= leave_after:
            return {"type": "http.disconnect"}
        part = body[sent : sent + chunk]
        sent += len(part)
        return {"type": "http.request", "body": part, "more_body": sent < len(body)}

    scope = {"type": "http", "method": "POST", "path": "/jobs", "query_string": b"",
             "headers": [(b"content-type", content_type.encode())]}  # fmt: skip
    return Request(scope, receive)


async def items_of(form: FormData) -> list[tuple[str, Any]]:
    """The form as comparable values: a file as (filename, content type, size, bytes)."""
    items: list[tuple[str, Any]] = []
    for name, value in form.multi_items():
        if isinstance(value, UploadFile):
            data = await value.read()
            items.append((name, (value.filename, value.content_type, value.size, data)))
        else:
            items.append((name, value))
    await form.close()
    return items


def outcome(body: bytes, content_type: str, chunk: int = 65536) -> Any:
    """What read_job_form makes of the body: the items, or the problem's status, kind, detail and errors."""

    async def read() -> Any:
        try:
            form = await read_job_form(request_of(body, content_type, chunk), SETTINGS)
        except Problem as problem:
            return (problem.status, problem.kind, problem.detail, problem.body().get("errors"))
        return await items_of(form)

    return asyncio.run(read())


def both(body: bytes, content_type: str, monkeypatch: pytest.MonkeyPatch, chunk: int = 65536) -> tuple[Any, Any]:
    """The outcome with our parser, then with Starlette's parse (on the event loop) in its place."""
    ours = outcome(body, content_type, chunk)
    with monkeypatch.context() as patch:
        patch.setattr(LimitedMultiPartParser, "parse", MultiPartParser.parse)
        theirs = outcome(body, content_type, chunk)
    return ours, theirs


VALID: dict[str, Callable[[], tuple[bytes, str]]] = {
    "a large content, a style, params as text": lambda: encoded(
        [("content", ("photo.jpg", BIG, "image/jpeg")), ("style", ("s.png", SMALL, "image/png"))],
        {"params": '{"iterations": 10}'},
    ),
    "two styles, params as a JSON part, a webhook": lambda: encoded(
        [
            ("content", ("c.png", SMALL)),
            ("style", ("a.png", SMALL)),
            ("style", ("b.png", BIG)),
            ("params", ("params.json", b'{"iterations": 5}', "application/json")),
        ],
        {"webhook": "https://example.com/hook", "webhook_events": ["completed", "progress"]},
    ),
    "an empty file": lambda: encoded([("content", ("c.png", b"")), ("style", ("s.png", SMALL))]),
}


@pytest.mark.parametrize("case", VALID)
@pytest.mark.parametrize("chunk", [1000, 65536, 700_000])
def test_a_valid_form_reads_as_starlette_reads_it(case: str, chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    body, content_type = VALID[case]()
    ours, theirs = both(body, content_type, monkeypatch, chunk)
    assert isinstance(ours, list) and ours == theirs
    assert all(data[3] in (BIG, SMALL, b"", b'{"iterations": 5}') for _, data in ours if isinstance(data, tuple))


def over(limit: int) -> bytes:
    return os.urandom(limit + 1)


REFUSED: dict[str, tuple[Callable[[], tuple[bytes, str]], int, str]] = {
    "a file over NST_MAX_UPLOAD_BYTES": (
        lambda: encoded([("content", ("c.png", SMALL)), ("style", ("s.png", over(SETTINGS.max_upload_bytes)))]),
        413,
        "style: the file is larger than 2500000 bytes",
    ),
    "params as a JSON part over 64 KB": (
        lambda: encoded([("content", ("c.png", SMALL)), ("params", ("p.json", over(MAX_TEXT_FIELD_BYTES)))]),
        413,
        "params: the JSON part is larger than 65536 bytes",
    ),
    "a text field over 64 KB": (
        lambda: encoded([("content", ("c.png", SMALL))], {"params": "x" * (MAX_TEXT_FIELD_BYTES + 1)}),
        413,
        "Part exceeded maximum size of 64KB.",
    ),
    "more files than the styles allow": (
        lambda: encoded([("content", ("c.png", SMALL))] + [("style", (f"{i}.png", SMALL)) for i in range(4)]),
        413,
        "Too many files. Maximum number of files is 4.",
    ),
    "more text fields than a form has": (
        lambda: encoded([("content", ("c.png", SMALL))], {"webhook_events": ["progress"] * 9}),
        413,
        "Too many fields. Maximum number of fields is 8.",
    ),
    "an unknown field": (
        lambda: encoded([("content", ("c.png", SMALL)), ("surprise", ("x", b"1"))]),
        422,
        "surprise: unknown form field",
    ),
    "a body that is not multipart": (lambda: (b'{"content": "x"}', "application/json"), 415, ""),
    "no boundary": (
        lambda: (encoded([("content", ("c.png", SMALL))])[0], "multipart/form-data"),
        422,
        "request: malformed multipart body: Missing boundary in multipart.",
    ),
    "bytes that are not a multipart body": (
        lambda: (b"garbage" * 1000, "multipart/form-data; boundary=xyz"),
        422,
        "request: malformed multipart body: Invalid multipart data.",
    ),
    "a part with no name": (
        lambda: (
            b'--xyz\r\nContent-Disposition: form-data; filename="a"\r\n\r\n1\r\n--xyz--\r\n',
            "multipart/form-data; boundary=xyz",
        ),
        422,
        'request: malformed multipart body: The Content-Disposition header field "name" must be provided.',
    ),
}


@pytest.mark.parametrize("case", REFUSED)
def test_each_limit_and_error_is_the_same_problem_as_before(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make, status, detail = REFUSED[case]
    body, content_type = make()
    ours, theirs = both(body, content_type, monkeypatch)
    assert ours == theirs
    assert ours[0] == status and (not detail or ours[2] == detail), ours


class Watched(LimitedMultiPartParser):
    """Records the threads its callbacks ran in and the bytes of each feed."""

    threads: set[int]
    fed: list[int]

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        self.threads.add(threading.get_ident())
        super().on_part_data(data, start, end)

    def _feed(self, parser: Any, chunks: list[bytes], last: bool = False) -> None:
        self.fed.append(sum(len(chunk) for chunk in chunks))
        super()._feed(parser, chunks, last)


def test_the_body_is_parsed_off_the_event_loop_a_mib_at_a_time() -> None:
    body, content_type = encoded([("content", ("c.jpg", BIG)), ("style", ("s.png", SMALL))])
    request = request_of(body, content_type, chunk=16384)
    parser = Watched(request.headers, request, max_file_bytes=SETTINGS.max_upload_bytes, max_files=4)
    parser.threads, parser.fed = set(), []

    async def parse() -> tuple[int, FormData]:
        return threading.get_ident(), await parser.parse()

    loop_thread, form = asyncio.run(parse())
    assert parser.threads and loop_thread not in parser.threads
    assert len(parser.fed) == len(body) // FEED_BYTES + 1 and sum(parser.fed) == len(body)
    assert all(size < FEED_BYTES + 16384 for size in parser.fed)  # read ahead by at most FEED_BYTES and a chunk
    upload = form["content"]
    assert isinstance(upload, UploadFile) and upload.size == len(BIG) and upload.file.read() == BIG
    asyncio.run(form.close())


def test_a_file_over_the_limit_stops_the_parser_with_nothing_past_the_limit_written() -> None:
    limit = 1_500_000
    body, content_type = encoded([("content", ("c.jpg", BIG))])
    request = request_of(body, content_type)
    parser = LimitedMultiPartParser(request.headers, request, max_file_bytes=limit, max_files=4)
    with pytest.raises(FileTooLarge):
        asyncio.run(parser.parse())
    upload = parser._current_part.file
    assert upload is not None and upload.size is not None and upload.size <= limit
    assert upload.file.closed


def test_a_client_that_leaves_mid_body_leaves_no_file_open() -> None:
    body, content_type = encoded([("content", ("c.png", SMALL)), ("style", ("s.jpg", BIG))])
    request = request_of(body, content_type, leave_after=2_000_000)
    parser = LimitedMultiPartParser(request.headers, request, max_file_bytes=SETTINGS.max_upload_bytes, max_files=4)
    with pytest.raises(ClientDisconnect):
        asyncio.run(parser.parse())
    opened = [name for name, value in parser.items if isinstance(value, UploadFile)]
    assert opened == ["content"]  # one file was whole, the other half-written: both closed
    assert all(file.closed for file in parser._files_to_close_on_error)
