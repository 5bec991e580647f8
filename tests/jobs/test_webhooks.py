"""Webhooks: the address checker, one delivery attempt against a real receiver, and deliveries
through the whole service (API, GPU worker, `nst webhooks`, Redis) to receivers on 127.0.0.1."""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis
from standardwebhooks import Webhook

from api.problems import Problem
from api.webhook_form import WebhookRequest, check_webhook
from jobs.keys import JOBS_KEY, job_key
from jobs.record import JobRecord, new_job_id
from jobs.settings import Settings, check_secret
from jobs.store import JobStore
from jobs.telemetry import WEBHOOK_DELIVERIES_KEY
from jobs.url_safety import CheckedUrl, Unresolvable, UnsafeUrl, check_url, forbidden_reason
from jobs.webhooks import JITTER, MAX_RETRIES, announce, parse_events, retry_delay
from tests.conftest import SAMPLES
from tests.services import HANG, Service, StartService, is_final, poll, submit
from worker.webhook_delivery import deliver, post_to, signed_headers, verdict_for

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
TINY = {"iterations": 8, "height": 32, "width": 32, "snapshot_every": 2}
LONG = {"iterations": 20000, "height": 32, "width": 32}  # runs until canceled


# -- a receiver ------------------------------------------------------------------------------


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers the next of `statuses`
    (200 once they run out); a 3xx carries `location`."""

    statuses: list[int] = field(default_factory=list)
    location: str | None = None
    requests: list[Received] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.changed:
                    receiver.requests.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.changed.notify_all()
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def wait_for(self, count: int, timeout: float = HANG) -> list[Received]:
        """Until `count` requests have come (a deadline, not a timing assertion)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} of {count} webhook requests arrived")
            return list(self.requests)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


@pytest.fixture
def second_receiver() -> Iterator[Receiver]:
    started = Receiver().start()
    yield started
    started.stop()


def verified(request: Received) -> dict[str, Any]:
    """The body, once its Standard Webhooks signature checks out (raises otherwise)."""
    return Webhook(SECRET).verify(request.body, request.headers)


# -- the address checker ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),
        ("100.64.0.1", "not globally routable"),  # carrier-grade NAT
        # IPv4 written inside IPv6 is judged as the IPv4 address it carries.
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.0.0.1", "private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ],
)
def test_addresses_webhooks_may_not_reach(address: str, reason: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("ftp://93.184.216.34/x", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "http:// or https://"),
        ("http:///path", "no host"),
        ("http://93.184.216.34:99999/", "not a valid URL"),
        ("http://93.184.216.34/a b", "spaces"),
        ("http://127.0.0.1:6379/", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://[::ffff:7f00:1]/", "loopback"),
        ("http://localhost:8000/", "does not resolve to a public address"),  # a name: no address told
        ("http://[fec0::1]/", "site-local"),
        ("http://93.184.216.34:0/", "port 0"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
        ("http://10.0.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://nothing.invalid/hook", "does not resolve to a public address"),
        ("http://xn--/hook", "does not resolve|not valid"),
    ],
)
def test_unsafe_urls_are_refused_with_a_reason(url: str, words: str) -> None:
    with pytest.raises(UnsafeUrl, match=words):
        check_url(url)


def test_the_flag_allows_private_addresses_but_not_other_schemes() -> None:
    checked = check_url("http://user:pw@127.0.0.1:8080/hook?x=1", allow_private=True)
    assert checked.addresses == ("127.0.0.1",) and checked.host_header == "127.0.0.1:8080"
    assert checked.url_for("127.0.0.1") == "http://user:pw@127.0.0.1:8080/hook?x=1"
    with pytest.raises(UnsafeUrl, match="http"):
        check_url("ftp://127.0.0.1/", allow_private=True)
    with pytest.raises(Unresolvable):
        check_url("http://nothing.invalid/", allow_private=True)


def test_a_public_address_passes() -> None:
    checked = check_url("https://93.184.216.34/hook")
    assert checked.addresses == ("93.184.216.34",) and checked.port == 443 and checked.host_header == "93.184.216.34"


# -- events, back-off, secret, verdicts --------------------------------------------------------


def test_events_are_a_list_or_repeated_fields() -> None:
    assert parse_events(["completed, started", "snapshot"]) == ["started", "snapshot", "completed"]
    assert parse_events(["completed", "completed"]) == ["completed"]
    with pytest.raises(ValueError, match="'finished'"):
        parse_events(["started,finished"])
    with pytest.raises(ValueError, match="at least one"):
        parse_events([" , "])


def test_retries_back_off_for_about_an_hour_within_the_visibility_timeout() -> None:
    delays = [retry_delay(n, 4.0) for n in range(MAX_RETRIES)]
    assert delays[:3] == [4.0, 8.0, 16.0]
    assert 50 * 60 <= sum(delays) <= 90 * 60
    # A retry waits in the webhook worker unacknowledged until its ETA: past the broker's
    # visibility timeout Redis would hand it out again. Even the smallest timeout is longer.
    smallest_visibility_timeout = Settings(job_timeout_seconds=10).visibility_timeout
    assert max(retry_delay(n, 4.0, JITTER) for n in range(MAX_RETRIES + 5)) < smallest_visibility_timeout


def test_the_secret_must_be_base64_of_16_bytes_or_more(monkeypatch: pytest.MonkeyPatch) -> None:
    check_secret(SECRET)
    check_secret(SECRET.removeprefix("whsec_").rstrip("="))
    for bad in ("whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="NST_WEBHOOK_SECRET"):
            check_secret(bad)
    monkeypatch.setenv("NST_WEBHOOK_SECRET", "whsec_???")
    with pytest.raises(ValueError, match="NST_WEBHOOK_SECRET"):
        Settings()


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "delivered"), (204, "delivered"), (301, "failed"), (302, "failed"), (400, "failed"), (404, "failed"),
     (408, "retry"), (429, "retry"), (500, "retry"), (503, "retry")],
)  # fmt: skip
def test_what_an_answer_means(status: int, verdict: str) -> None:
    assert verdict_for(status) == verdict


def test_the_signature_verifies_and_names_the_message() -> None:
    headers = signed_headers(SECRET, "msg_1", '{"a":1}')
    assert Webhook(SECRET).verify('{"a":1}', headers) == {"a": 1}
    assert headers["webhook-id"] == "msg_1"
    with pytest.raises(Exception, match="signature"):
        Webhook(SECRET).verify('{"a":2}', headers)


# -- one attempt, against a real receiver ------------------------------------------------------


def test_an_attempt_posts_the_signed_payload(receiver: Receiver) -> None:
    attempt = deliver(receiver.url + "?k=1", "msg_x", '{"type":"job.completed"}', SECRET, allow_private=True)
    assert attempt.verdict == "delivered" and attempt.detail == "HTTP 200"
    (request,) = receiver.wait_for(1)
    assert request.path == "/hook?k=1" and request.headers["content-type"] == "application/json"
    assert verified(request) == {"type": "job.completed"}


@pytest.mark.parametrize(("status", "verdict"), [(500, "retry"), (429, "retry"), (404, "failed"), (302, "failed")])
def test_an_attempt_judges_the_answer(receiver: Receiver, status: int, verdict: str) -> None:
    receiver.statuses = [status]
    receiver.location = "http://127.0.0.1:1/elsewhere"
    assert deliver(receiver.url, "msg_x", "{}", SECRET, allow_private=True).verdict == verdict
    assert len(receiver.requests) == 1


def test_an_attempt_to_a_loopback_receiver_is_refused_without_the_flag(receiver: Receiver) -> None:
    attempt = deliver(receiver.url, "msg_x", "{}", SECRET)
    assert attempt.verdict == "refused" and "loopback" in attempt.detail
    assert receiver.requests == []


def test_an_attempt_with_nothing_listening_is_retried() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as server:
        port = server.server_address[1]  # bound, then closed: nothing listens there
    assert deliver(f"http://127.0.0.1:{port}/", "msg_x", "{}", SECRET, allow_private=True).verdict == "retry"


def test_the_request_goes_to_the_checked_address_whatever_the_name_says(receiver: Receiver) -> None:
    # As if `hooks.example` had resolved to 127.0.0.1 when checked: the request goes to that
    # address with the name in Host, and is not resolved again (DNS rebinding has no second look).
    port = int(receiver.url.split(":")[2].split("/")[0])
    url = f"http://hooks.example:{port}/hook"
    checked = CheckedUrl(url, "http", "hooks.example", port, ("127.0.0.1",), urlsplit(url))
    assert post_to(checked, "127.0.0.1", b"{}", {"content-type": "application/json"}) == 200
    (request,) = receiver.wait_for(1)
    assert request.headers["host"] == f"hooks.example:{port}" and request.path == "/hook"


# -- the submit form, checked ------------------------------------------------------------------


def test_without_a_secret_a_webhook_is_refused_with_the_reason() -> None:
    with pytest.raises(Problem) as raised:
        check_webhook(WebhookRequest("https://93.184.216.34/hook"), Settings(webhook_secret=None))
    assert raised.value.status == 422 and "NST_WEBHOOK_SECRET" in raised.value.detail
    assert raised.value.body()["errors"][0]["field"] == "webhook"
    assert check_webhook(WebhookRequest(), Settings(webhook_secret=None)) == {}


# -- announce: once a job, at most once an interval --------------------------------------------


class RecordingCelery:
    """Stands in for the broker (not what these tests are about): keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Any], str]] = []

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        self.sent.append((name, args, queue))


def test_announce_sends_each_event_once_and_snapshots_at_most_once_an_interval(redis_db: redis.Redis) -> None:
    store = JobStore(redis_db, 3600)
    settings = Settings(webhook_snapshot_interval_seconds=3600)
    celery = RecordingCelery()
    record = JobRecord(
        id=new_job_id(), params={"iterations": 5}, style_count=1,
        webhook="https://93.184.216.34/hook", webhook_events=["snapshot", "completed"],
    )  # fmt: skip
    store.create(record, b"c", [b"s"])
    assert not announce(store, record.id, "started", settings=settings, celery=celery)  # not asked for
    assert not announce(store, record.id, "completed", settings=settings, celery=celery)  # not final yet
    assert announce(store, record.id, "snapshot", settings=settings, celery=celery)
    assert not announce(store, record.id, "snapshot", settings=settings, celery=celery)  # within the interval
    store.cancel(record.id)
    assert announce(store, record.id, "completed", settings=settings, celery=celery)
    assert not announce(store, record.id, "completed", settings=settings, celery=celery)  # once a job
    assert [(name, args[1], queue) for name, args, queue in celery.sent] == [
        ("nst.webhook", "snapshot", "nst-webhooks"),
        ("nst.webhook", "completed", "nst-webhooks"),
    ]
    body = json.loads(celery.sent[1][1][4])
    assert body["type"] == "job.completed" and body["data"]["status"] == "canceled" and body["data"]["id"] == record.id
    store.forget(record.id, 1)


# -- through the service -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    env = {
        "NST_WEBHOOK_SECRET": SECRET,
        "NST_WEBHOOK_ALLOW_PRIVATE": "1",
        "NST_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "NST_WEBHOOK_SNAPSHOT_INTERVAL_SECONDS": "600",  # exactly one snapshot event per job
    }
    return start_service(env, workers=1, webhooks=True)


@pytest.fixture(scope="module")
def no_flag(start_service: StartService) -> Service:
    """The API as deployed: a secret, no private addresses; no worker (nothing runs)."""
    return start_service({"NST_WEBHOOK_SECRET": SECRET}, workers=0)


def deliveries(service: Service) -> dict[str, int]:
    """The webhook delivery counters (jobs/telemetry.py) as Redis holds them."""
    client = redis.Redis.from_url(service.redis_url)
    return {k.decode(): int(v) for k, v in client.hgetall(WEBHOOK_DELIVERIES_KEY).items()}


def wait_for_counts(service: Service, before: dict[str, int], **expected: int) -> None:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        now = deliveries(service)
        if all(now.get(k, 0) - before.get(k, 0) >= v for k, v in expected.items()):
            return
        time.sleep(0.1)
    raise AssertionError(f"delivery counts {deliveries(service)} (before {before}), wanted {expected}")


def with_webhook(url: str, *events: str) -> list[tuple[str, str]]:
    return [("webhook", url), *(("webhook_events", e) for e in events)]


def submit_with(client: httpx.Client, params: dict[str, Any], fields: list[tuple[str, str]]) -> httpx.Response:
    files: list[tuple[str, Any]] = [
        ("content", (COFFEE.name, COFFEE.read_bytes())),
        ("style", (STARRY.name, STARRY.read_bytes())),
        ("params", (None, json.dumps(params))),
    ]
    files += [(name, (None, value)) for name, value in fields]
    return client.post("/jobs", files=files)


def test_a_job_sends_started_snapshot_and_completed_signed(
    client: httpx.Client, service: Service, receiver: Receiver
) -> None:
    # Both forms of webhook_events: a comma-separated list, and the field repeated.
    answer = submit_with(client, TINY, with_webhook(receiver.url, "started,snapshot", "completed"))
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded", service.logs()
    requests = receiver.wait_for(3)
    bodies = {body["type"]: body for body in map(verified, requests)}  # raises unless each is signed
    assert set(bodies) == {"job.started", "job.snapshot", "job.completed"}, service.logs()
    assert len({r.headers["webhook-id"] for r in requests}) == 3
    assert all(body["data"]["id"] == job_id and body["timestamp"] for body in bodies.values())
    assert bodies["job.started"]["data"]["status"] == "running"
    assert bodies["job.snapshot"]["data"]["snapshots"][0]["iteration"] == 1
    # The completed event carries the job exactly as GET /jobs/{id} shows it.
    assert bodies["job.completed"]["data"] == client.get(f"/jobs/{job_id}").json()


def test_a_receiver_that_fails_twice_gets_a_third_try(
    client: httpx.Client, service: Service, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    before = deliveries(service)
    answer = submit_with(client, TINY, with_webhook(receiver.url))
    assert answer.status_code == 202, answer.text
    first, second, third = receiver.wait_for(3)
    wait_for_counts(service, before, retrying=2, delivered=1)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == third.headers["webhook-id"]
    assert first.body == second.body == third.body
    assert verified(third)["type"] == "job.completed"


def test_a_redirect_is_not_followed_nor_retried(
    client: httpx.Client, service: Service, receiver: Receiver, second_receiver: Receiver
) -> None:
    receiver.statuses = [302]
    receiver.location = second_receiver.url
    before = deliveries(service)
    answer = submit_with(client, TINY, with_webhook(receiver.url))
    assert answer.status_code == 202, answer.text
    wait_for_counts(service, before, failed=1)  # the attempt is over, and final
    assert len(receiver.requests) == 1 and second_receiver.requests == []


def test_a_job_canceled_while_queued_sends_completed(
    client: httpx.Client, service: Service, receiver: Receiver
) -> None:
    blocker = submit(client, COFFEE, [STARRY], LONG).json()  # holds the only worker
    poll(client, blocker["id"], lambda j: j["status"] == "running")
    queued = submit_with(client, TINY, with_webhook(receiver.url, "started", "completed")).json()
    assert client.post(f"/jobs/{queued['id']}/cancel").status_code == 202
    client.post(f"/jobs/{blocker['id']}/cancel")
    (request,) = receiver.wait_for(1)
    body = verified(request)
    assert body["type"] == "job.completed" and body["data"]["status"] == "canceled"
    poll(client, blocker["id"], is_final)


def test_a_loopback_webhook_without_the_flag_is_refused_and_nothing_stored(no_flag: Service) -> None:
    client = redis.Redis.from_url(no_flag.redis_url)
    jobs_before = client.zcard(JOBS_KEY)
    with httpx.Client(base_url=no_flag.url, timeout=30) as http:
        answer = submit_with(http, TINY, with_webhook("http://127.0.0.1:9/hook"))
    assert answer.status_code == 422 and answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["errors"][0]["field"] == "webhook" and "loopback" in problem["errors"][0]["message"]
    assert client.zcard(JOBS_KEY) == jobs_before


@pytest.mark.parametrize(
    ("fields", "field_name", "words"),
    [
        ([("webhook", "ftp://93.184.216.34/hook")], "webhook", "http"),
        ([("webhook", "javascript:alert(1)")], "webhook", "http"),
        ([("webhook", "https://93.184.216.34/"), ("webhook_events", "started,finished")], "webhook_events", "finished"),
        ([("webhook_events", "started")], "webhook_events", "webhook URL"),
        ([("webhook", "https://a/"), ("webhook", "https://b/")], "webhook", "once"),
    ],
)
def test_bad_webhook_fields_are_422(
    no_flag: Service, fields: list[tuple[str, str]], field_name: str, words: str
) -> None:
    with httpx.Client(base_url=no_flag.url, timeout=30) as http:
        answer = submit_with(http, TINY, fields)
    assert answer.status_code == 422, answer.text
    (error,) = answer.json()["errors"]
    assert error["field"] == field_name and words in error["message"]


def test_a_public_webhook_is_stored_with_its_events(no_flag: Service) -> None:
    with httpx.Client(base_url=no_flag.url, timeout=30) as http:
        answer = submit_with(http, TINY, with_webhook("https://93.184.216.34/hook?t=" + secrets.token_hex(4)))
    assert answer.status_code == 202, answer.text
    stored = redis.Redis.from_url(no_flag.redis_url).hmget(job_key(answer.json()["id"]), ["webhook", "webhook_events"])
    assert json.loads(stored[0]).startswith("https://93.184.216.34/hook?t=") and json.loads(stored[1]) == ["completed"]
    assert "webhook" not in answer.json()  # not shown: a URL may carry a token


def test_an_internationalised_host_is_checked_and_sent_in_its_ascii_form(monkeypatch: pytest.MonkeyPatch) -> None:
    import jobs.url_safety as url_safety

    asked: list[str] = []

    def fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list:
        if kwargs.get("flags") == socket.AI_NUMERICHOST:
            raise socket.gaierror("not numeric")
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443))]

    monkeypatch.setattr(url_safety.socket, "getaddrinfo", fake_getaddrinfo)
    checked = check_url("https://bücher.example/hook")
    assert asked == ["xn--bcher-kva.example"] and checked.host_header == "xn--bcher-kva.example"
