"""Conditional and ranged GETs of an image (RFC 9110 §13 and §14), decided apart from any I/O.

Given the size and the strong ETag of what would be sent, and the request's If-None-Match, Range
and If-Range, `decide` says what to answer: 304 (the client has it), 206 with one byte range,
416 (a range past the end), or 200 whole. Only one range is served: a request for several is
answered 200 whole, as RFC 9110 allows (a multipart/byteranges body buys our clients nothing).
A Range header that does not parse is ignored, as the RFC asks: the answer is 200, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from starlette.datastructures import Headers

# Digits beyond this many make a position larger than any object; int() of a longer string would
# be wasted work (and past 4,300 digits Python refuses it).
_MAX_DIGITS = 18
_HUGE = 10**_MAX_DIGITS
_SPEC = re.compile(r"([0-9]*)[ \t]*-[ \t]*([0-9]*)")
_UNIT = re.compile(r"[ \t]*bytes[ \t]*=(.*)", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Decision:
    """The answer: `status` (200, 206, 304 or 416), the body's bytes [start, end) for 200 and 206,
    and the headers that go with it (ETag and Accept-Ranges always; Content-Length for a body;
    Content-Range for 206 and 416)."""

    status: int
    start: int = 0
    end: int = 0
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return self.end - self.start


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else _HUGE


def parse_range(value: str) -> tuple[int | None, int | None] | None:
    """The one byte range of a Range header as (first, last) (first None: a suffix of `last`
    bytes; last None: to the end), or None when the header is not one valid byte range."""
    unit = _UNIT.fullmatch(value)
    if unit is None:
        return None
    # A list may hold empty elements (RFC 9110 §5.6.1): they do not count.
    specs = [spec.strip(" \t") for spec in unit.group(1).split(",")]
    specs = [spec for spec in specs if spec]
    if len(specs) != 1:
        return None
    found = _SPEC.fullmatch(specs[0])
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:
        return None, _position(last)
    start = _position(first)
    if last and _position(last) < start:
        return None  # an invalid range-spec: the header is ignored
    return start, _position(last) if last else None


def tags(header: str | None) -> list[str]:
    """The entity tags of an If-None-Match or If-Range value, as written (W/ kept)."""
    return [tag.strip(" \t") for tag in (header or "").split(",") if tag.strip(" \t")]


def none_match(if_none_match: str | None, etag: str) -> bool:
    """Whether If-None-Match names this representation: `*`, or a tag equal to ours by weak
    comparison (the W/ prefix ignored on either side), as RFC 9110 §13.1.2 asks for GET."""
    ours = etag.removeprefix("W/")
    return any(tag == "*" or tag.removeprefix("W/") == ours for tag in tags(if_none_match))


def range_applies(if_range: str | None, etag: str) -> bool:
    """Whether Range is to be honoured: no If-Range, or one that names our ETag by strong
    comparison (a weak tag, or a date: we send no Last-Modified, never matches)."""
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    return not etag.startswith("W/") and not value.startswith("W/") and value == etag


def decide(size: int, etag: str, headers: Mapping[str, str]) -> Decision:
    """What to answer for a representation of `size` bytes with ETag `etag`; `headers` are the
    request's (lowercase names; conditions() joins repeated lines)."""
    common = {"ETag": etag, "Accept-Ranges": "bytes"}
    if none_match(headers.get("if-none-match"), etag):
        return Decision(304, headers=common)
    whole = Decision(200, 0, size, common | {"Content-Length": str(size)})
    raw = headers.get("range")
    if raw is None or size <= 0 or not range_applies(headers.get("if-range"), etag):
        return whole
    wanted = parse_range(raw)
    if wanted is None:
        return whole
    first, last = wanted
    if first is None:  # the last `last` bytes
        if last == 0:
            return Decision(416, headers=common | {"Content-Range": f"bytes */{size}"})
        start, end = max(size - (last or 0), 0), size
    else:
        if first >= size:
            return Decision(416, headers=common | {"Content-Range": f"bytes */{size}"})
        start, end = first, size if last is None else min(last + 1, size)
    content_range = f"bytes {start}-{end - 1}/{size}"
    return Decision(206, start, end, common | {"Content-Length": str(end - start), "Content-Range": content_range})


def conditions(headers: Headers) -> dict[str, str]:
    """The request's If-None-Match, Range and If-Range for `decide`, each header's lines joined
    with ", " (a list header may be sent as several lines)."""
    found: dict[str, str] = {}
    for name in ("if-none-match", "range", "if-range"):
        lines = headers.getlist(name)
        if lines:
            found[name] = ", ".join(lines)
    return found
