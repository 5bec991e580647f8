"""Images answer conditional and ranged GETs (issue 20): ETag and If-None-Match (304), one Range
(206, 416 past the end), Content-Length always; a result in the blob store is streamed from it, a
result of the previous version (in Redis) is served the same way, and with an S3 store and
NST_RESULT_REDIRECT_SECONDS the result is a redirect to a signed URL.

First api/byte_ranges.py's decisions, table by table; then the real stack: the shared one (a job
run to the end, and jobs whose records and results are written here as the worker, or an earlier
version, would have left them), and stacks of this module's own over moto's S3 server.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from starlette.datastructures import Headers

from api.byte_ranges import Decision, conditions, decide, parse_range
from jobs.blobs import BlobStore, result_path
from jobs.keys import job_key, result_key, snapshot_key
from jobs.record import JobRecord, new_job_id
from tests.conftest import SAMPLES, gradient_image
from tests.s3_server import S3Server
from tests.services import Service, StartService, is_final, poll, submit

SIZE = 1000
ETAG = '"abc"'
TINY = {"iterations": 20, "height": 32, "width": 32, "snapshot_every": 10}  # snapshots 1, 10, 20


def whole(size: int = SIZE) -> Decision:
    return Decision(200, 0, size, {"ETag": ETAG, "Accept-Ranges": "bytes", "Content-Length": str(size)})


def part(start: int, end: int, size: int = SIZE) -> Decision:
    headers = {"Content-Length": str(end - start), "Content-Range": f"bytes {start}-{end - 1}/{size}"}
    return Decision(206, start, end, {"ETag": ETAG, "Accept-Ranges": "bytes"} | headers)


NOT_MODIFIED = Decision(304, headers={"ETag": ETAG, "Accept-Ranges": "bytes"})
UNSATISFIABLE = Decision(416, headers={"ETag": ETAG, "Accept-Ranges": "bytes", "Content-Range": f"bytes */{SIZE}"})


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, whole()),
        # If-None-Match: weak comparison, `*`, lists; it goes before Range.
        ({"if-none-match": ETAG}, NOT_MODIFIED),
        ({"if-none-match": f"W/{ETAG}"}, NOT_MODIFIED),
        ({"if-none-match": '"other", "abc"'}, NOT_MODIFIED),
        ({"if-none-match": '"other",W/"abc" '}, NOT_MODIFIED),
        ({"if-none-match": "*"}, NOT_MODIFIED),
        ({"if-none-match": '"other"'}, whole()),
        ({"if-none-match": '"abcd"'}, whole()),
        ({"if-none-match": ""}, whole()),
        ({"if-none-match": ETAG, "range": "bytes=0-9"}, NOT_MODIFIED),
        ({"if-none-match": '"other"', "range": "bytes=0-9"}, part(0, 10)),
        # One range: first-last, first-, -suffix; the end clamped.
        ({"range": "bytes=0-99"}, part(0, 100)),
        ({"range": "bytes=0-0"}, part(0, 1)),
        ({"range": "bytes=999-999"}, part(999, 1000)),
        ({"range": "bytes=100-"}, part(100, SIZE)),
        ({"range": "bytes=-100"}, part(900, SIZE)),
        ({"range": "bytes=-5000"}, part(0, SIZE)),
        ({"range": "bytes=990-5000"}, part(990, SIZE)),
        ({"range": "bytes=0-" + "9" * 5000}, part(0, SIZE)),
        ({"range": "BYTES=0-9"}, part(0, 10)),
        ({"range": "bytes= 0-9 ,"}, part(0, 10)),  # empty list elements do not count
        # Past the end: 416 with the size.
        ({"range": f"bytes={SIZE}-"}, UNSATISFIABLE),
        ({"range": "bytes=5000-6000"}, UNSATISFIABLE),
        ({"range": "bytes=-0"}, UNSATISFIABLE),
        ({"range": "bytes=" + "9" * 5000 + "-"}, UNSATISFIABLE),
        # Not one valid byte range: ignored, the whole image.
        ({"range": "bytes=5-2"}, whole()),
        ({"range": "bytes=0-1,5-6"}, whole()),
        ({"range": "bytes=0-1, -5"}, whole()),
        ({"range": "items=0-1"}, whole()),
        ({"range": "0-99"}, whole()),
        ({"range": "bytes="}, whole()),
        ({"range": "bytes=-"}, whole()),
        ({"range": "bytes=abc"}, whole()),
        ({"range": "bytes=1e3-"}, whole()),
        ({"range": "bytes=0x10-"}, whole()),
        ({"range": "bytes=\u0663-"}, whole()),  # an Arabic-Indic three is a digit to str.isdigit, not here
        ({"range": "bytes=0-9\n"}, whole()),
        ({"range": "bytes=--1"}, whole()),
        ({"range": ""}, whole()),
        # If-Range: Range only while the ETag is still ours (strong comparison).
        ({"range": "bytes=0-9", "if-range": ETAG}, part(0, 10)),
        ({"range": "bytes=0-9", "if-range": '"other"'}, whole()),
        ({"range": "bytes=0-9", "if-range": f"W/{ETAG}"}, whole()),
        ({"range": "bytes=0-9", "if-range": "Wed, 21 Oct 2015 07:28:00 GMT"}, whole()),
        ({"range": "bytes=5000-", "if-range": '"other"'}, whole()),
    ],
)
def test_decisions(headers: dict[str, str], expected: Decision) -> None:
    assert decide(SIZE, ETAG, headers) == expected


def test_an_empty_image_is_answered_whole_and_a_weak_etag_never_matches_if_range() -> None:
    assert decide(0, ETAG, {"range": "bytes=0-"}) == whole(0)
    assert decide(0, ETAG, {"range": "bytes=-5"}) == whole(0)
    weak = decide(SIZE, 'W/"abc"', {"range": "bytes=0-9", "if-range": 'W/"abc"'})
    assert weak.status == 200 and weak.length == SIZE
    assert decide(SIZE, 'W/"abc"', {"if-none-match": '"abc"'}).status == 304


def test_parse_range_gives_first_and_last() -> None:
    assert parse_range("bytes=3-7") == (3, 7)
    assert parse_range("bytes=3-") == (3, None)
    assert parse_range("bytes=-7") == (None, 7)
    assert parse_range("bytes=7-3") is None


def test_repeated_header_lines_are_one_list() -> None:
    raw = [(b"if-none-match", b'"x"'), (b"if-none-match", b'"abc"'), (b"range", b"bytes=0-9"), (b"accept", b"*/*")]
    found = conditions(Headers(raw=raw))
    assert found == {"if-none-match": '"x", "abc"', "range": "bytes=0-9"}
    assert decide(SIZE, ETAG, found) == NOT_MODIFIED
    assert conditions(Headers(raw=[(b"range", b"bytes=0-1"), (b"range", b"bytes=5-6")])) == {
        "range": "bytes=0-1, bytes=5-6"
    }
    assert decide(SIZE, ETAG, {"range": "bytes=0-1, bytes=5-6"}) == whole()


# -- through the real stack ---------------------------------------------------------------------


def png_bytes(side: int = 64, seed: int = 5) -> bytes:
    buffer = io.BytesIO()
    gradient_image(side, side, seed=seed).save(buffer, "PNG")
    return buffer.getvalue()


def check_ranges(http: httpx.Client, url: str, media_type: str) -> tuple[bytes, str]:
    """What every image must answer: the same bytes and ETag twice, 304 for its ETag, 206 for a
    range, a suffix and an open range, 416 past the end, If-Range. Returns (bytes, ETag)."""
    first, second = http.get(url), http.get(url)
    assert first.status_code == 200, first.text
    assert first.headers["content-type"] == media_type
    body, etag = first.content, first.headers["etag"]
    size = len(body)
    assert size > 200 and first.headers["content-length"] == str(size)
    assert first.headers["accept-ranges"] == "bytes"
    assert "transfer-encoding" not in first.headers  # framed by Content-Length, never chunked
    assert etag.startswith('"') and second.headers["etag"] == etag and second.content == body

    for condition in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        unchanged = http.get(url, headers={"If-None-Match": condition})
        assert unchanged.status_code == 304 and unchanged.content == b"", condition
        assert unchanged.headers["etag"] == etag
    assert http.get(url, headers={"If-None-Match": '"nope"'}).content == body

    for wanted, (start, end) in {
        "bytes=0-99": (0, 100),
        "bytes=-100": (size - 100, size),
        "bytes=100-": (100, size),
        f"bytes={size - 10}-{size + 1000}": (size - 10, size),
    }.items():
        ranged = http.get(url, headers={"Range": wanted})
        assert ranged.status_code == 206, (wanted, ranged.text)
        assert ranged.content == body[start:end], wanted
        assert ranged.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
        assert ranged.headers["content-length"] == str(end - start)
        assert ranged.headers["content-type"] == media_type and ranged.headers["etag"] == etag

    past = http.get(url, headers={"Range": f"bytes={size}-"})
    assert past.status_code == 416 and past.headers["content-type"] == "application/problem+json"
    assert past.headers["content-range"] == f"bytes */{size}"
    assert past.json()["type"] == "/problems/range-not-satisfiable" and str(size) in past.json()["detail"]

    assert http.get(url, headers={"Range": "bytes=0-9", "If-Range": etag}).content == body[:10]
    other = http.get(url, headers={"Range": "bytes=0-9", "If-Range": '"nope"'})
    assert other.status_code == 200 and other.content == body
    for ignored in ("bytes=9-2", "bytes=0-1,4-5", "pages=1-2", "bytes=x"):
        answer = http.get(url, headers={"Range": ignored})
        assert answer.status_code == 200 and answer.content == body, ignored
    octets = http.get(url, headers={"Range": "bytes=0-9", "Accept": "application/octet-stream"})
    assert octets.status_code == 206 and octets.headers["content-type"] == "application/octet-stream"
    return body, etag


def write_record(service: Service, record: JobRecord, **keys: bytes) -> None:
    """A job hash (and raw keys: name -> bytes) written as a worker, or an earlier version, left them."""
    with redis.Redis.from_url(service.redis_url) as client:
        client.hset(job_key(record.id), mapping=dict(record.to_redis()))
        for name, value in keys.items():
            client.set(name, value)


def succeeded(blobs: bool, snapshots: list[int] | None = None) -> JobRecord:
    return JobRecord(
        id=new_job_id(), status="succeeded", params={"iterations": 1}, style_count=1, blobs=blobs,
        snapshots=snapshots or [],
    )  # fmt: skip


@pytest.fixture(scope="module")
def finished(service: Service) -> dict[str, Any]:
    """A job of the shared stack run to its end, with snapshots."""
    with httpx.Client(base_url=service.url, timeout=60) as http:
        job = submit(http, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], TINY).json()
        done = poll(http, job["id"], is_final)
    assert done["status"] == "succeeded", service.logs()
    return done


def test_a_result_answers_etag_304_and_ranges(client: httpx.Client, service: Service, finished: dict[str, Any]) -> None:
    url = f"/jobs/{finished['id']}/result"
    body, _ = check_ranges(client, url, "image/png")
    assert body.startswith(b"\x89PNG")
    # Streamed from the blob store, where the worker put it; nothing of it in Redis.
    assert (service.root / "blobs" / result_path(finished["id"])).read_bytes() == body
    with redis.Redis.from_url(service.redis_url) as raw:
        assert not raw.exists(result_key(finished["id"]))
    answer = client.get(url)
    assert answer.headers["cache-control"] == "private, max-age=86400, immutable"
    assert answer.headers["content-disposition"] == f'inline; filename="{finished["id"]}.png"'
    assert "Accept" in answer.headers["vary"]


def test_snapshots_answer_etag_304_and_ranges(client: httpx.Client, finished: dict[str, Any]) -> None:
    job_id = finished["id"]
    tenth, tenth_etag = check_ranges(client, f"/jobs/{job_id}/snapshots/10", "image/jpeg")
    latest, latest_etag = check_ranges(client, f"/jobs/{job_id}/snapshots/latest", "image/jpeg")
    assert tenth[:2] == b"\xff\xd8" and tenth_etag != latest_etag
    assert client.get(f"/jobs/{job_id}/snapshots/20").headers["etag"] == latest_etag
    fresh = client.get(f"/jobs/{job_id}/snapshots/latest")
    assert fresh.headers["cache-control"] == "no-cache" and fresh.headers["x-iteration"] == "20"
    # `latest` is revalidated every time: 304 while it is the same one, with its iteration.
    unchanged = client.get(f"/jobs/{job_id}/snapshots/latest", headers={"If-None-Match": latest_etag})
    assert unchanged.status_code == 304 and unchanged.headers["x-iteration"] == "20"
    assert unchanged.headers["cache-control"] == "no-cache"
    assert client.get(f"/jobs/{job_id}/snapshots/latest", headers={"If-None-Match": tenth_etag}).content == latest
    kept = client.get(f"/jobs/{job_id}/snapshots/10")
    assert kept.headers["cache-control"] == "private, max-age=86400, immutable" and kept.headers["x-iteration"] == "10"


def test_a_result_in_the_blob_store_is_streamed_in_ranges(client: httpx.Client, service: Service) -> None:
    record = succeeded(blobs=True)
    # Bigger than one streamed chunk (jobs.blobs.STREAM_CHUNK_BYTES), and not a picture: served as stored.
    stored = os.urandom(700_000)
    store = BlobStore(str(service.root / "blobs"))
    store.put(result_path(record.id), stored)
    write_record(service, record)
    url = f"/jobs/{record.id}/result"
    body, etag = check_ranges(client, url, "image/png")
    assert body == stored
    across = client.get(url, headers={"Range": "bytes=262000-530000"})  # spans chunk boundaries
    assert across.status_code == 206 and across.content == stored[262000:530001]
    assert client.get(url).headers["etag"] == etag
    store.delete([result_path(record.id)])  # gone from the store (expired, or deleted by hand)
    missing = client.get(url)
    assert missing.status_code == 404 and missing.json()["detail"] == "the result has expired"


def test_a_job_of_the_previous_version_is_served_from_redis_with_ranges(client: httpx.Client, service: Service) -> None:
    record = succeeded(blobs=False, snapshots=[1, 5])
    result, first, fifth = png_bytes(seed=1), png_bytes(seed=2), png_bytes(seed=3)
    write_record(
        service, record,
        **{result_key(record.id): result, snapshot_key(record.id, 1): first, snapshot_key(record.id, 5): fifth},
    )  # fmt: skip
    assert not (service.root / "blobs" / "jobs" / record.id).exists()
    body, _ = check_ranges(client, f"/jobs/{record.id}/result", "image/png")
    assert body == result
    assert check_ranges(client, f"/jobs/{record.id}/snapshots/1", "image/jpeg")[0] == first
    latest = client.get(f"/jobs/{record.id}/snapshots/latest", headers={"Range": "bytes=-50"})
    assert latest.status_code == 206 and latest.content == fifth[-50:] and latest.headers["x-iteration"] == "5"
    with redis.Redis.from_url(service.redis_url) as raw:
        raw.delete(result_key(record.id))
    assert client.get(f"/jobs/{record.id}/result").status_code == 404


def test_with_s3_and_a_redirect_setting_the_result_is_a_signed_url(
    start_service: StartService, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = s3_server.env("image-ranges") | {"NST_RESULT_REDIRECT_SECONDS": "60"}
    stack = start_service(env, workers=0)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = BlobStore(env["NST_BLOB_STORE"])
    record, legacy = succeeded(blobs=True), succeeded(blobs=False)
    result = png_bytes(seed=7)
    store.put(result_path(record.id), result)
    write_record(stack, record)
    write_record(stack, legacy, **{result_key(legacy.id): result})
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        answer = http.get(f"/jobs/{record.id}/result")
        assert answer.status_code == 307, answer.text
        assert answer.headers["cache-control"] == "no-store" and answer.content == b""
        location = answer.headers["location"]
        assert location.startswith(s3_server.endpoint) and "Signature" in location
        assert httpx.get(location, timeout=60).content == result  # no credentials: the URL is enough
        assert http.get(f"/jobs/{record.id}/result", follow_redirects=True).content == result
        # A job of the previous version has no object to sign: its bytes are served as before.
        kept = http.get(f"/jobs/{legacy.id}/result", headers={"Range": "bytes=0-9"})
        assert kept.status_code == 206 and kept.content == result[:10]


class Refusing(BaseHTTPRequestHandler):
    """An S3 endpoint that refuses everything (403), as a misconfigured or revoked store does."""

    def _refuse(self) -> None:
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = do_PUT = _refuse  # the names http.server calls

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def refusing_endpoint() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_store_that_fails_is_a_503_with_retry_after(
    start_service: StartService, s3_server: S3Server, refusing_endpoint: str
) -> None:
    stack = start_service(s3_server.env("refused") | {"AWS_ENDPOINT_URL": refusing_endpoint}, workers=0)
    record = succeeded(blobs=True)
    write_record(stack, record)
    answer = httpx.get(f"{stack.url}/jobs/{record.id}/result", timeout=60)
    assert answer.status_code == 503, answer.text
    assert answer.json()["type"] == "/problems/storage-unavailable" and answer.headers["retry-after"] == "5"
    assert "Traceback" not in (stack.root / "api.log").read_text()
