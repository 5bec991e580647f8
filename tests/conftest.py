"""Shared fixtures: tiny images, explicit random weights, the bundled samples; one redis-server
and one service stack for the whole session; the markers each test gets from what it uses.

Redis. `redis_server` is one redis-server for the session. Tests run one at a time in one
process, so a test that talks to Redis itself takes `redis_db`: database 0, emptied (FLUSHDB)
before it, which costs nothing and leaves it nothing of another test's. A database that must
outlive one test (a module's fixture) or that another process uses (an `nst api`, a worker) gets
a number of its own instead, `redis_server.new_database()`, so that no test's FLUSHDB empties it
under them.

Stacks (Redis, a Celery worker and `nst api`, tests/services.py). `service` is the stack a module
gets unless it defines a `service` fixture of its own: one stack for the session (`shared_service`,
SHARED_ENV), shared by every module that needs no other settings; whatever a module leaves queued
or running is canceled after it. A module that needs other settings starts its own with the
`start_service` factory (`start_service({"NST_X": "1"}, workers=0)`), stopped after the module.

Markers (registered in pyproject.toml): a test whose fixtures start a stack (`shared_service`,
`start_service`) is marked `service`, one that uses `redis_server` `redis`; `browser`, `slow` and
`service` for tests that start processes themselves are set in their modules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from tests.s3_server import S3Server, start_s3_server
from tests.services import RedisServer, Service, StartService, settle, start_redis_server

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "examples" / "images"
# The shared stack's settings: CORS for test_service, quick SSE keep-alives for test_events; no
# other module's tests notice either.
# Every process a test starts inherits this: a worker skips the device checks (about 50 s a
# start on a 2-core CPU) unless its test turns them on (the shared stack below, the calibration tests).
os.environ.setdefault("NST_CALIBRATE", "0")

SHARED_ENV = {
    "NST_CORS_ORIGINS": "http://front.example",
    "NST_SSE_HEARTBEAT_SECONDS": "0.5",
    # Its worker measures its device at start, at small sizes: what /readyz and /metrics show.
    "NST_CALIBRATE": "1",
    "NST_CALIBRATION_SPEED_SIZE": "32x32",
    "NST_CALIBRATION_MEMORY_SIDES": "128,192",
}
STACK_FIXTURES = {"shared_service", "start_service"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & STACK_FIXTURES:
            item.add_marker(pytest.mark.service)
        if "redis_server" in used:
            item.add_marker(pytest.mark.redis)


@pytest.fixture(autouse=True)
def random_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests ask for random weights explicitly; nothing falls back to them by itself."""
    monkeypatch.setenv("NST_VGG_WEIGHTS", "random")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis_server(tmp_path_factory.mktemp("session-redis"))
    yield server
    server.process.terminate()
    server.process.wait()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server with the test bucket; give each test its own prefix (`s3_server.env(prefix)`)."""
    server = start_s3_server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """Database 0 of the session's redis-server, empty."""
    client = redis.Redis(port=redis_server.port, db=0)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def shared_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    stack = Service(tmp_path_factory.mktemp("shared-service"), dict(SHARED_ENV))
    try:
        yield stack.start(workers=1)
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def service(shared_service: Service) -> Iterator[Service]:
    """The shared stack, for a module that needs no settings of its own (it overrides `service`
    if it does); what the module leaves queued or running is canceled after it."""
    assert shared_service.running(), f"a process of the shared stack has exited:\n{shared_service.logs()}"
    yield shared_service
    settle(shared_service)


@pytest.fixture(scope="module")
def start_service(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[StartService]:
    """start_service(env, workers=1, webhooks=False): a stack of the module's own, with `env` on top
    of tests.services.Service's settings; stopped after the module (or earlier by its stop())."""
    started: list[Service] = []

    def start(env: dict[str, str] | None = None, workers: int = 1, webhooks: bool = False) -> Service:
        stack = Service(tmp_path_factory.mktemp(request.module.__name__.rpartition(".")[2]), dict(env or {}))
        started.append(stack)
        return stack.start(workers=workers, webhooks=webhooks)

    yield start
    for stack in reversed(started):
        stack.stop()


@pytest.fixture
def client(service: Any) -> Iterator[httpx.Client]:
    """HTTP to the `service` fixture of the requesting module (a tests.services.Service)."""
    with httpx.Client(base_url=service.url, timeout=30) as http:
        yield http


def gradient_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with some noise: enough structure for VGG features."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    r = 255 * xs / max(width - 1, 1)
    g = 255 * ys / max(height - 1, 1)
    b = 128 + 100 * np.sin(xs / 3.0 + seed) * np.cos(ys / 4.0)
    pixels = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


@pytest.fixture
def content_image() -> Image.Image:
    return gradient_image(48, 40, seed=1)


@pytest.fixture
def style_image() -> Image.Image:
    return gradient_image(40, 40, seed=2).rotate(45)
