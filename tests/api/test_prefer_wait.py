"""`POST /jobs` with `Prefer: wait=N` (RFC 7240, issue 22): 200 and the finished job when it ends
within N seconds (at most 60), 202 as usual when not; a malformed preference is ignored.

First the header's parsing; then the shared stack, whose worker runs the jobs; then an API in a
thread of this process with no worker (its jobs stay queued until canceled), whose event hub
shows what a waiting submission holds: a cancel ends the wait with the canceled job, and a client
that leaves takes its subscription with it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from api.app import create_app
from api.event_hub import EventHub
from api.prefer_wait import MAX_WAIT_SECONDS, requested_wait
from jobs.settings import Settings
from jobs.view import JobPublic
from tests.conftest import SAMPLES
from tests.services import HANG, RedisServer, is_final, poll, submit
from worker.local import free_port

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
SHORT = {"iterations": 4, "height": 32, "width": 32, "snapshot_every": 2}
LONG = {"iterations": 20000, "height": 32, "width": 32}


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        (["wait=10"], 10),
        (["WAIT = 7"], 7),
        (['wait="12"'], 12),
        (["respond-async, wait=5"], 5),
        (["handling=lenient; x=1", "wait=3;foo=bar"], 3),
        (["wait=1000"], MAX_WAIT_SECONDS),
        (["wait=" + "9" * 5000], MAX_WAIT_SECONDS),
        (["wait=2, wait=30"], 2),  # only the first counts
        ([], None),
        (["respond-async"], None),
        (["wait=0"], None),
        (["wait=abc"], None),
        (["wait=1.5"], None),
        (["wait=-3"], None),
        (["wait"], None),
        (["wait=abc, wait=10"], None),  # the first is malformed: ignored, and so is the preference
        (["wait=١٢"], None),  # digits, but not ASCII ones
    ],
)
def test_the_wait_preference_is_read_as_rfc_7240_says(headers: list[str], seconds: int | None) -> None:
    assert requested_wait(headers) == seconds


def test_a_job_that_ends_within_the_wait_is_answered_finished(client: httpx.Client) -> None:
    answer = submit(client, COFFEE, [STARRY], SHORT, headers={"Prefer": "wait=60"}, timeout=HANG)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "succeeded" and job["result_url"] == f"/jobs/{job['id']}/result"
    assert answer.headers["preference-applied"] == "wait=60"
    assert answer.headers["location"] == answer.headers["content-location"] == f"/jobs/{job['id']}"
    assert "Prefer" in answer.headers["vary"]
    JobPublic.model_validate(job)
    assert job == client.get(f"/jobs/{job['id']}").json()  # the job as GET /jobs/{id} shows it
    result = client.get(job["result_url"])
    assert result.status_code == 200 and result.content.startswith(b"\x89PNG")


def test_a_wait_over_sixty_seconds_is_sixty_and_other_preferences_are_ignored(client: httpx.Client) -> None:
    answer = submit(client, COFFEE, [STARRY], SHORT, headers={"Prefer": "respond-async, wait=1000"}, timeout=HANG)
    assert answer.status_code == 200, answer.text
    assert answer.headers["preference-applied"] == f"wait={MAX_WAIT_SECONDS}"
    assert answer.json()["status"] == "succeeded"


def test_a_malformed_preference_is_ignored(client: httpx.Client) -> None:
    for prefer in ("wait=abc", "wait=1.5", "wait=-3", "wait"):
        answer = submit(client, COFFEE, [STARRY], SHORT, headers={"Prefer": prefer})
        assert answer.status_code == 202, (prefer, answer.text)
        assert "preference-applied" not in answer.headers and "Prefer" in answer.headers["vary"]
        assert answer.json()["status"] == "queued"
        poll(client, answer.json()["id"], is_final)  # one at a time: none holds back the next test


def test_a_job_that_does_not_end_within_the_wait_is_answered_as_usual(client: httpx.Client) -> None:
    started = time.monotonic()
    answer = submit(client, COFFEE, [STARRY], LONG, headers={"Prefer": "wait=1"})
    waited = time.monotonic() - started
    assert answer.status_code == 202, answer.text
    job = answer.json()
    try:
        assert job["status"] in ("queued", "running") and answer.headers["preference-applied"] == "wait=1"
        assert answer.headers["location"] == f"/jobs/{job['id']}" and "Prefer" in answer.headers["vary"]
        assert waited >= 0.9  # it did wait (a bound from below: no machine is too slow for it)
    finally:
        client.post(f"/jobs/{job['id']}/cancel")
    poll(client, job["id"], is_final)


# -- an API in this process, no worker --------------------------------------------------------


@pytest.fixture(scope="module")
def app_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FastAPI, str]]:
    blobs = tmp_path_factory.mktemp("prefer-wait-blobs")
    settings = Settings(redis_url=redis_server.url(redis_server.new_database()), blob_store=str(blobs))
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert wait_until(lambda: server.started), "uvicorn did not start"
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def wait_until(condition: Callable[[], bool], timeout: float = HANG) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def newest_job(url: str) -> str:
    return str(httpx.get(f"{url}/jobs?limit=1").json()["items"][0]["id"])


def test_a_job_canceled_during_the_wait_is_answered_at_once(app_url: tuple[FastAPI, str]) -> None:
    app, url = app_url
    hub: EventHub = app.state.hub
    answers: list[httpx.Response] = []

    def post() -> None:
        with httpx.Client(base_url=url, timeout=HANG) as http:
            answers.append(submit(http, COFFEE, [STARRY], SHORT, headers={"Prefer": "wait=60"}))

    poster = threading.Thread(target=post)
    poster.start()
    assert wait_until(lambda: hub.subscriber_count == 1)  # queued (no worker), and waiting for its end
    job_id = newest_job(url)
    assert httpx.post(f"{url}/jobs/{job_id}/cancel").status_code == 202
    poster.join(timeout=HANG)
    assert answers and answers[0].status_code == 200, answers
    assert answers[0].json()["id"] == job_id and answers[0].json()["status"] == "canceled"
    assert hub.subscriber_count == 0 and hub.feeds == {}


def test_a_client_that_leaves_while_waiting_leaves_nothing_behind(
    app_url: tuple[FastAPI, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, url = app_url
    hub: EventHub = app.state.hub
    caplog.set_level(logging.INFO, logger="api.prefer_wait")
    files = [("content", ("coffee.png", COFFEE.read_bytes())), ("style", ("starry.jpg", STARRY.read_bytes()))]
    request = httpx.Request("POST", f"{url}/jobs", files=files, headers={"Prefer": "wait=60"})
    head = "POST /jobs HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in request.headers.items())
    port = int(url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=HANG) as raw:
        raw.sendall(head.encode() + b"\r\n" + request.read())
        assert wait_until(lambda: hub.subscriber_count == 1)
    # Gone long before its 60 s are up: the disconnect ends the wait (the log says so), not the clock.
    assert wait_until(lambda: any("the client left" in record.getMessage() for record in caplog.records))
    assert wait_until(lambda: hub.subscriber_count == 0 and hub.feeds == {})
    job = httpx.get(f"{url}/jobs/{newest_job(url)}").json()
    assert job["status"] == "queued"  # the job itself goes on
    httpx.post(f"{url}/jobs/{job['id']}/cancel")
