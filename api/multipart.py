"""Reading the `POST /jobs` form with every limit enforced while the bytes stream in.

Starlette spools each uploaded file whole (to memory, then a temporary file) before a handler
runs, with no cap of its own. This parser counts each file's bytes as they arrive
and stops at the first byte over NST_MAX_UPLOAD_BYTES, so nothing larger reaches the disk.

Parsing (python-multipart's callbacks, pure Python) and the temporary-file writes run in a
worker thread: the event loop only receives the body and hands it over FEED_BYTES at a time, so
a burst of uploads leaves it free for polls and event streams, and a large file costs one
thread hop per FEED_BYTES instead of one per chunk received (Starlette's own parser writes each
chunk past the first MB through the thread pool).
"""

from __future__ import annotations

import codecs
from typing import TYPE_CHECKING

from python_multipart import MultipartParser
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from api.problems import Problem, file_problem, validation_problem
from jobs.settings import Settings

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # a TypedDict for type checkers only

MAX_TEXT_FIELD_BYTES = 64 * 1024  # `params` is a small JSON object
FORM_FIELDS = ("content", "style", "params", "webhook", "webhook_events")
MAX_TEXT_FIELDS = 8  # params, webhook, and webhook_events given once per event or so
FEED_BYTES = 1 << 20  # body read ahead of the parser: per upload in progress, at most this much more in memory


class FileTooLarge(MultiPartException):
    def __init__(self, field: str, limit: int) -> None:
        # Starlette's exception keeps its text in `message` (its args are what __init__ was given).
        kind = "JSON part" if field == "params" else "file"
        super().__init__(f"the {kind} is larger than {limit} bytes")
        self.field = field


class LimitedMultiPartParser(MultiPartParser):
    """Starlette's parser with a per-file byte limit checked on every chunk."""

    def __init__(self, headers: Headers, request: Request, *, max_file_bytes: int, max_files: int) -> None:
        super().__init__(
            headers, request.stream(), max_files=max_files, max_fields=MAX_TEXT_FIELDS,
            max_part_size=MAX_TEXT_FIELD_BYTES,
        )  # fmt: skip
        self.max_file_bytes = max_file_bytes
        self._file_bytes = 0

    def on_part_begin(self) -> None:
        super().on_part_begin()
        self._file_bytes = 0

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._current_part.file is not None:
            self._file_bytes += end - start
            name = self._current_part.field_name
            limit = MAX_TEXT_FIELD_BYTES if name == "params" else self.max_file_bytes
            if self._file_bytes > limit:
                raise FileTooLarge(name, limit)
        super().on_part_data(data, start, end)

    async def parse(self) -> FormData:
        """Starlette's parse, with the same callbacks, limits and errors; the parsing and the file
        writes happen in a worker thread, fed FEED_BYTES of the body at a time."""
        _, params = parse_options_header(self.headers["Content-Type"])
        charset = params.get(b"charset", "utf-8")
        if isinstance(charset, bytes):
            charset = charset.decode("latin-1")
        try:
            self._charset = codecs.lookup(charset).name
        except LookupError:
            self._charset = "latin-1"
        try:
            boundary = params[b"boundary"]
        except KeyError:
            raise MultiPartException("Missing boundary in multipart.") from None
        callbacks: MultipartCallbacks = {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }
        try:
            parser = MultipartParser(boundary, callbacks)
            received: list[bytes] = []
            size = 0
            async for chunk in self.stream:
                received.append(chunk)
                size += len(chunk)
                if size >= FEED_BYTES:
                    await run_in_threadpool(self._feed, parser, received)
                    received, size = [], 0
            await run_in_threadpool(self._feed, parser, received, True)
        except BaseException as exc:
            # Also when the client left or the task was cancelled: no thread is writing by now.
            for file in self._files_to_close_on_error:
                file.close()
            if isinstance(exc, FormParserError):
                raise MultiPartException("Invalid multipart data.") from exc
            raise
        return FormData(self.items)

    def _feed(self, parser: MultipartParser, chunks: list[bytes], last: bool = False) -> None:
        """In a worker thread: parse the chunks (the callbacks check every limit), writing each
        file's data to its spooled file as Starlette's parse does after each chunk."""
        for chunk in chunks:
            parser.write(chunk)
            self._write_file_parts()
        if last:
            parser.finalize()
            self._write_file_parts()

    def _write_file_parts(self) -> None:
        for part, data in self._file_parts_to_write:
            assert part.file is not None and part.file.size is not None  # a file part, created with size 0
            part.file.file.write(data)
            part.file.size += len(data)
        for part in self._file_parts_to_finish:
            assert part.file is not None
            part.file.file.seek(0)
        self._file_parts_to_write.clear()
        self._file_parts_to_finish.clear()


async def read_job_form(request: Request, settings: Settings) -> FormData:
    """The form, or a problem: 415 if it is not multipart, 413 past a limit, 422 if malformed."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise Problem(
            "unsupported-media-type", "send multipart/form-data with the fields content, style (one or more) and params"
        )
    parser = LimitedMultiPartParser(
        request.headers, request, max_file_bytes=settings.max_upload_bytes, max_files=settings.max_styles + 2
    )  # the content, the styles, and params when it comes as a JSON part
    try:
        form = await parser.parse()
    except FileTooLarge as exc:
        raise file_problem("too-large", exc.field, exc.message) from exc
    except MultiPartException as exc:
        message = exc.message
        if message.startswith(("Too many", "Part exceeded", "Field exceeded")):
            raise Problem("too-many-parts", message) from exc
        raise validation_problem([{"field": "request", "message": f"malformed multipart body: {message}"}]) from exc
    unknown = sorted({name for name, _ in form.multi_items()} - set(FORM_FIELDS))
    if unknown:
        await form.close()
        raise validation_problem([{"field": name, "message": "unknown form field"} for name in unknown])
    return form


def form_files(form: FormData, field: str) -> list[UploadFile]:
    values = form.getlist(field)
    if any(not isinstance(v, UploadFile) for v in values):
        raise validation_problem([{"field": field, "message": "must be a file upload, not text"}])
    return [v for v in values if isinstance(v, UploadFile)]


async def form_text(form: FormData, field: str) -> str | None:
    """A text field; also sent as a part of its own with a content type (application/json, as
    generated clients send an object), when it is no larger than a text field may be."""
    values = form.getlist(field)
    if len(values) > 1:
        raise validation_problem([{"field": field, "message": "give it once"}])
    if not values:
        return None
    value = values[0]
    if isinstance(value, str):
        return value
    data = await value.read(MAX_TEXT_FIELD_BYTES + 1)
    if len(data) > MAX_TEXT_FIELD_BYTES:
        raise Problem("too-many-parts", f"{field}: larger than {MAX_TEXT_FIELD_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise validation_problem([{"field": field, "message": "must be UTF-8 text"}]) from exc
