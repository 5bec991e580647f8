"""Every kind of bad upload gets a clear 4xx problem+json and changes nothing; odd but valid
images work. Afterwards the API, Redis and the worker are all still healthy."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLES, gradient_image
from tests.services import FINAL, Service, StartService, poll

MAX_UPLOAD = 300_000
COFFEE = (SAMPLES / "coffee.png").read_bytes()  # 466 KB: over this service's per-file limit
STARRY = (SAMPLES / "starry_night.jpg").read_bytes()  # 315 KB: also over
TINY = {"iterations": 1, "height": 16, "width": 16}


def encode(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a decompression bomb's calling card."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + png_chunk(b"IEND", b"")
    )  # fmt: skip


PHOTO = encode(gradient_image(40, 30), "PNG")
PAINTING = encode(gradient_image(30, 30, seed=4), "JPEG")


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    env = {
        "NST_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
        "NST_MAX_INPUT_PIXELS": "4000000",
        "NST_MAX_QUEUED_JOBS": "2",
        "NST_MAX_STYLES": "3",
        "NST_MAX_SIDE": "1024",
        "NST_MAX_ITERATIONS": "5000",
    }
    return start_service(env, workers=1)


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


def post(client: httpx.Client, content: bytes = PHOTO, styles: tuple[bytes, ...] = (PAINTING,), params: Any = TINY,
         **extra: Any) -> httpx.Response:  # fmt: skip
    files = [("content", ("content.bin", content))] + [("style", (f"s{i}.bin", s)) for i, s in enumerate(styles)]
    data = None if params is None else {"params": params if isinstance(params, str) else json.dumps(params)}
    return client.post("/jobs", files=files, data=data, **extra)


def assert_problem(answer: httpx.Response, status: int, mentions: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    assert mentions in body["detail"], body


def job_count(client: httpx.Client) -> int:
    return len(client.get("/jobs", params={"limit": 100}).json()["items"])


BAD_FILES = {
    "text": b"just some words\n" * 10,
    "html": b"<!doctype html><html><body><img src=x></body></html>",
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "zip": b"PK\x03\x04" + b"\0" * 26 + b"PK\x05\x06" + b"\0" * 18,
    "empty": b"",
    "truncated_jpeg": encode(gradient_image(64, 64), "JPEG")[:400],
    "truncated_png": PHOTO[: len(PHOTO) // 2],
    "png_signature_then_garbage": b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
@pytest.mark.parametrize("field", ["content", "style"])
def test_files_that_are_not_images_are_415_naming_the_field(client: httpx.Client, kind: str, field: str) -> None:
    before = job_count(client)
    data = BAD_FILES[kind]
    answer = post(client, content=data) if field == "content" else post(client, styles=(data,))
    assert_problem(answer, 415, field)
    assert job_count(client) == before


def test_a_decompression_bomb_is_refused_from_its_header(client: httpx.Client) -> None:
    bomb = png_declaring(50_000, 50_000)
    assert len(bomb) < 1000
    assert_problem(post(client, content=bomb), 413, "content")
    assert_problem(post(client, styles=(png_declaring(3000, 3000),)), 413, "style")  # 9 Mpx > 4 Mpx


def test_a_file_over_the_size_limit_is_413_while_streaming(client: httpx.Client) -> None:
    assert_problem(post(client, content=COFFEE), 413, "content")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold as bytes arrive
        boundary = b"--xyz"
        yield boundary + b'\r\nContent-Disposition: form-data; name="content"; filename="big.png"\r\n\r\n'
        for _ in range(100):
            yield b"\0" * 10_000
        yield b"\r\n" + boundary + b"--\r\n"

    answer = client.post("/jobs", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert_problem(answer, 413, "content")


def test_too_many_files_or_unknown_fields(client: httpx.Client) -> None:
    assert answer_status(post(client, styles=(PAINTING,) * 6)) == 413
    extra = client.post(
        "/jobs",
        files=[("content", ("c", PHOTO)), ("style", ("s", PAINTING)), ("surprise", ("x", b"1"))],
    )
    assert_problem(extra, 422, "surprise")
    assert_problem(client.post("/jobs", json={"content": "x"}), 415, "multipart")
    assert_problem(post(client, params="x" * 100_000), 413, "")


def answer_status(answer: httpx.Response) -> int:
    assert answer.headers["content-type"].startswith("application/problem+json")
    return answer.status_code


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ("{not json", "params"),
        ('"a string"', "params"),
        ('{"style_weight": NaN}', "params.style_weight"),
        ('{"content_weight": Infinity}', "params.content_weight"),
        ('{"learning_rate": -Infinity}', "params.learning_rate"),
        ({"iterations": "ten"}, "params.iterations"),
        ({"iterations": -5}, "params.iterations"),
        ({"iterations": 10**30}, "params.iterations"),
        ({"iterations": 6000}, "params.iterations"),  # over this service's NST_MAX_ITERATIONS
        ({"height": 2048}, "params.height"),  # over NST_MAX_SIDE
        ({"width": 8}, "params.width"),
        ({"style_layers": ["conv9_1"], "style_layer_weights": [1]}, "params.style_layers"),
        ({"content_layer_weights": [1, 2]}, "params"),
        ({"style_blend_weights": [1, 1]}, "params.style_blend_weights"),
        ({"preserve_colours": True}, "params.preserve_colours"),
        ({"init": ["blend"]}, "params.init"),
        ({"seed": 1.5}, "params.seed"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(client: httpx.Client, params: Any, field: str) -> None:
    before = job_count(client)
    assert_problem(post(client, params=params), 422, field)
    assert job_count(client) == before


ODD_IMAGES = {
    "greyscale": encode(gradient_image(20, 20).convert("L"), "PNG"),
    "palette": encode(gradient_image(20, 20).convert("P"), "PNG"),
    "rgba": encode(gradient_image(20, 20).convert("RGBA"), "PNG"),
    "cmyk_jpeg": encode(gradient_image(20, 20).convert("CMYK"), "JPEG"),
    "sixteen_bit": encode(Image.fromarray((np.arange(400).reshape(20, 20) * 160).astype(np.uint16)), "PNG"),
    "animated_gif": encode(gradient_image(20, 20), "GIF", save_all=True, append_images=[gradient_image(20, 20, 3)]),
    "exif_rotated": encode(
        gradient_image(30, 20), "JPEG", exif=(lambda e: (e.__setitem__(0x0112, 6), e)[1])(Image.Exif())
    ),
    "one_pixel": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
}


def test_odd_but_valid_images_are_accepted_and_stylised(client: httpx.Client) -> None:
    ids = {}
    for name, data in ODD_IMAGES.items():
        while (answer := post(client, content=data, styles=(data,))).status_code == 429:
            poll(client, ids[list(ids)[-1]], lambda j: j["status"] in FINAL)  # the queue holds two here
        assert answer.status_code == 202, (name, answer.text)
        ids[name] = answer.json()["id"]
    for name, job_id in ids.items():
        done = poll(client, job_id, lambda j: j["status"] in FINAL)
        assert done["status"] == "succeeded", (name, done["error"])
    result = client.get(f"/jobs/{ids['exif_rotated']}/result")
    with Image.open(io.BytesIO(result.content)) as img:
        assert img.size == (20, 30)  # upright, as the EXIF tag says
    with Image.open(io.BytesIO(client.get(f"/jobs/{ids['one_pixel']}/result").content)) as img:
        assert img.size == (1, 1)


def test_a_full_queue_answers_429_with_retry_after(client: httpx.Client) -> None:
    busy = post(client, params={"iterations": 5000, "height": 16, "width": 16}).json()
    poll(client, busy["id"], lambda j: j["status"] == "running")
    waiting = [post(client).json() for _ in range(2)]
    refused = post(client)
    assert_problem(refused, 429, "queue")
    assert int(refused.headers["retry-after"]) > 0
    for job in (busy, *waiting):
        client.post(f"/jobs/{job['id']}/cancel")
    for job in waiting:
        poll(client, job["id"], lambda j: j["status"] in FINAL)


def test_everything_is_still_healthy_afterwards(client: httpx.Client, service: Service) -> None:
    # Module order: pytest runs this file's tests top to bottom, so this one comes last.
    readiness = client.get("/readyz").json()
    assert (readiness["redis"], readiness["workers"]) == ("ok", 1)
    assert service.api is not None and service.api.poll() is None
    assert all(worker.poll() is None for worker in service.workers)
    job = post(client).json()
    assert poll(client, job["id"], lambda j: j["status"] in FINAL)["status"] == "succeeded"
