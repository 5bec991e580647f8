"""What a hostile client, a careless operator or a fuzzer found (issue 17), each through the real
stack: redis-server, a Celery worker and `nst api` (uvicorn) on 127.0.0.1.

Two stacks: one with API keys and small per-key limits (each test uses keys of its own, so the
limits of one do not reach another), and one open (no keys) and without a worker, for what
happens before a job runs.
"""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from api.keys_file import add_key
from jobs.blobs import input_paths
from jobs.keys import content_key, style_key
from jobs.tenancy import Limits, TenantLimits
from tests.conftest import SAMPLES, gradient_image
from tests.services import HANG, Service, StartService, is_final, poll, settle

STARRY = SAMPLES / "starry_night.jpg"
LONG = {"iterations": 20000, "height": 32, "width": 32}  # runs until canceled
SHORT = {"iterations": 30, "height": 32, "width": 32, "snapshot_every": 10}
KEY_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")
SUBMISSIONS_PER_MINUTE = 30
STORED_BYTES = 6_000_000
ACTIVE_JOBS = 8


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noise_png(side: int, seed: int) -> bytes:
    """A PNG that does not compress: about 3 bytes a pixel."""
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels, "RGB"))


SMALL_PNG = png_bytes(gradient_image(40, 32, seed=3))


def post_job(
    client: httpx.Client, content: bytes, styles: list[bytes], params: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    files = [("content", ("content.png", content, "image/png"))]
    files += [("style", (f"style{i}.png", data, "image/png")) for i, data in enumerate(styles)]
    return client.post("/jobs", files=files, data={"params": json.dumps(params)}, **kwargs)


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "api-keys.jsonl"


@pytest.fixture(scope="module")
def keys(keys_file: Path) -> dict[str, str]:
    return {name: add_key(keys_file, name)[1] for name in KEY_NAMES}


@pytest.fixture(scope="module")
def keyed(start_service: StartService, keys_file: Path, keys: dict[str, str]) -> Service:
    env = {
        "NST_API_KEYS_FILE": str(keys_file),
        "NST_MAX_SUBMISSIONS_PER_MINUTE": str(SUBMISSIONS_PER_MINUTE),
        "NST_MAX_STORED_BYTES_PER_KEY": str(STORED_BYTES),
        "NST_MAX_ACTIVE_JOBS_PER_KEY": str(ACTIVE_JOBS),
    }
    return start_service(env, workers=1)


@pytest.fixture(scope="module")
def clients(keyed: Service, keys: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    made = {
        name: httpx.Client(base_url=keyed.url, timeout=60, headers={"Authorization": f"Bearer {key}"})
        for name, key in keys.items()
    }
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def store(keyed: Service) -> redis.Redis:
    return redis.Redis.from_url(keyed.redis_url)


@pytest.fixture(autouse=True)
def nothing_left_running(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test on the keyed stack, every job it left queued or running is canceled, and the
    worker is free: a test that failed half-way holds back none of the next ones."""
    yield
    if "clients" in request.fixturenames:
        settle(request.getfixturevalue("keyed"))


@pytest.fixture(scope="module")
def open_service(start_service: StartService) -> Service:
    env = {
        "NST_HEADER_TIMEOUT_SECONDS": "2",
        "NST_CORS_ORIGINS": "http://front.example",
        "NST_ALLOWED_HOSTS": "nst.example.com,*.nst.example.org",
    }
    return start_service(env, workers=0)


@pytest.fixture
def open_client(open_service: Service) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=open_service.url, timeout=60) as http:
        yield http


def tenant_of_key(keys_file: Path, name: str) -> str:
    return next(
        json.loads(line)["id"] for line in keys_file.read_text().splitlines() if json.loads(line)["name"] == name
    )


def inputs_present(client: redis.Redis, job_id: str, styles: int = 1) -> list[bool]:
    return [bool(client.exists(content_key(job_id)))] + [
        bool(client.exists(style_key(job_id, i))) for i in range(styles)
    ]


def objects_present(service: Service, job_id: str, styles: int = 1) -> list[bool]:
    """Whether each of the job's inputs is in the stack's blob store (where a submission puts them)."""
    return [(service.root / "blobs" / path).exists() for path in input_paths(job_id, styles)]


def wait_status(client: httpx.Client, job_id: str, status: str) -> dict[str, Any]:
    return poll(client, job_id, lambda job: job["status"] == status or is_final(job), timeout=300)


def cancel_and_wait(client: httpx.Client, job_id: str) -> dict[str, Any]:
    client.post(f"/jobs/{job_id}/cancel")
    return poll(client, job_id, is_final, timeout=300)


# -- 1. inputs go when no run can need them; what a key holds is bounded ---------------------------


def test_a_job_s_inputs_are_deleted_as_soon_as_it_ends(
    clients: dict[str, httpx.Client], keyed: Service, store: redis.Redis
) -> None:
    alice = clients["alice"]
    running = post_job(alice, SMALL_PNG, [SMALL_PNG], LONG).json()
    queued = post_job(alice, SMALL_PNG, [SMALL_PNG], LONG).json()
    wait_status(alice, running["id"], "running")
    assert objects_present(keyed, running["id"]) == [True, True]  # a run reads them (and a resumed one)
    assert objects_present(keyed, queued["id"]) == [True, True]
    assert inputs_present(store, queued["id"]) == [False, False]  # never in Redis

    assert alice.post(f"/jobs/{queued['id']}/cancel").status_code == 202
    assert objects_present(keyed, queued["id"]) == [False, False]  # in the cancel itself

    assert cancel_and_wait(alice, running["id"])["status"] == "canceled"
    assert objects_present(keyed, running["id"]) == [False, False]

    done = post_job(alice, SMALL_PNG, [SMALL_PNG], SHORT).json()
    finished = poll(alice, done["id"], is_final, timeout=300)
    assert finished["status"] == "succeeded", finished
    assert objects_present(keyed, done["id"]) == [False, False]
    assert alice.get(f"/jobs/{done['id']}/result").status_code == 200  # the result stays


def test_rounds_of_submit_and_cancel_do_not_grow_redis(
    clients: dict[str, httpx.Client], store: redis.Redis, keys_file: Path
) -> None:
    """The finding: content and 8 styles, then cancel, five times over, grew Redis by what was
    uploaded, for a day. Now what a canceled job uploaded is gone with the cancel."""
    bob = clients["bob"]
    # Keeps the worker busy: the rounds stay queued (another working size: they cannot join its batch).
    blocker = post_job(bob, SMALL_PNG, [SMALL_PNG], {**LONG, "height": 48, "width": 48}).json()
    wait_status(bob, blocker["id"], "running")
    files = [noise_png(300, seed) for seed in range(9)]  # 9 x ~270 KB
    uploaded = sum(len(data) for data in files)
    before = int(store.info("memory")["used_memory"])
    for _ in range(5):
        answer = post_job(bob, files[0], files[1:], LONG)
        assert answer.status_code == 202, answer.text
        assert bob.post(f"/jobs/{answer.json()['id']}/cancel").status_code == 202
    grown = int(store.info("memory")["used_memory"]) - before
    assert grown < uploaded, f"Redis grew by {grown} bytes over 5 rounds of {uploaded} uploaded bytes"
    limits = TenantLimits(store, 3600, Limits(None, 1, 1))
    assert limits.held_bytes(tenant_of_key(keys_file, "bob")) < uploaded / 2  # the blocker's inputs, snapshots
    cancel_and_wait(bob, blocker["id"])


def test_a_key_cannot_hold_more_bytes_than_its_limit(clients: dict[str, httpx.Client], keyed: Service) -> None:
    carol = clients["carol"]
    photo = noise_png(700, seed=7)  # ~1.5 MB
    assert 1_300_000 < len(photo) < STORED_BYTES // 3
    accepted = []
    refusal = None
    for _ in range(5):
        answer = post_job(carol, photo, [SMALL_PNG], LONG)
        if answer.status_code != 202:
            refusal = answer
            break
        accepted.append(answer.json()["id"])
    assert refusal is not None and len(accepted) == STORED_BYTES // (len(photo) + len(SMALL_PNG))
    assert refusal.status_code == 429 and refusal.headers["content-type"].startswith("application/problem+json")
    problem = refusal.json()
    assert problem["type"] == "/problems/too-much-stored" and problem["limit"] == STORED_BYTES
    assert int(refusal.headers["retry-after"]) > 0
    # Another key is not held back by carol's bytes.
    other = post_job(clients["grace"], SMALL_PNG, [SMALL_PNG], SHORT)
    assert other.status_code == 202, other.text
    # An ended job gives its uploads' bytes back.
    assert cancel_and_wait(carol, accepted.pop(0))["status"] == "canceled"
    again = post_job(carol, photo, [SMALL_PNG], LONG)
    assert again.status_code == 202, again.text
    accepted.append(again.json()["id"])
    for job_id in accepted:
        cancel_and_wait(carol, job_id)
    poll(clients["grace"], other.json()["id"], is_final, timeout=300)


def test_a_key_s_submissions_per_minute_are_bounded(clients: dict[str, httpx.Client]) -> None:
    dave = clients["dave"]
    accepted = 0
    refused = None
    for _ in range(2 * SUBMISSIONS_PER_MINUTE + 1):  # a minute's turn mid-way lets a second minute's worth in
        answer = post_job(dave, SMALL_PNG, [SMALL_PNG], LONG)
        if answer.status_code != 202:
            refused = answer
            break
        accepted += 1
        dave.post(f"/jobs/{answer.json()['id']}/cancel")  # the active-jobs limit is not what this tests
    assert refused is not None and refused.status_code == 429, "no limit on submissions a minute"
    assert accepted <= 2 * SUBMISSIONS_PER_MINUTE
    assert refused.json()["type"] == "/problems/too-many-submissions"
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_a_key_over_a_limit_is_told_before_it_uploads(
    clients: dict[str, httpx.Client], keyed: Service, keys: dict[str, str]
) -> None:
    heidi = clients["heidi"]
    jobs = [post_job(heidi, SMALL_PNG, [SMALL_PNG], LONG) for _ in range(ACTIVE_JOBS)]
    try:
        assert [job.status_code for job in jobs] == [202] * ACTIVE_JOBS
        head = (
            f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {keys['heidi']}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 50000000\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", keyed.api_port), timeout=120) as sock:
            sock.sendall(head.encode())  # and not a byte of the 50 MB announced
            answer = read_answer(sock).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 429") and "/problems/too-many-active-jobs" in answer, answer
    finally:
        for job in jobs:
            if job.status_code == 202:
                cancel_and_wait(heidi, job.json()["id"])


def read_answer(sock: socket.socket) -> bytes:
    """One whole HTTP answer: its head, and as many bytes of body as its Content-Length says."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_one_key_s_backlog_does_not_hold_back_another_key_s_first_job(clients: dict[str, httpx.Client]) -> None:
    erin, frank = clients["erin"], clients["frank"]
    first = post_job(erin, SMALL_PNG, [SMALL_PNG], LONG).json()
    wait_status(erin, first["id"], "running")
    backlog = [post_job(erin, SMALL_PNG, [SMALL_PNG], LONG).json()["id"] for _ in range(3)]
    mine = post_job(frank, SMALL_PNG, [SMALL_PNG], SHORT).json()
    assert mine["queue_position"] == 1, mine  # next, ahead of erin's backlog
    assert [erin.get(f"/jobs/{job_id}").json()["queue_position"] for job_id in backlog] == [2, 3, 4]
    cancel_and_wait(erin, first["id"])
    done = poll(frank, mine["id"], is_final, timeout=300)  # on a first-come queue: behind a job that never ends
    assert done["status"] == "succeeded"
    for job_id in backlog:
        cancel_and_wait(erin, job_id)


def test_the_active_jobs_limit_has_a_default() -> None:
    from jobs.settings import Settings

    assert Settings().max_active_jobs_per_key == 100


# -- 3. a small upload of a large picture ----------------------------------------------------------


def api_memory(service: Service) -> tuple[int, int]:
    """The API process's resident and peak resident memory, bytes."""
    assert service.api is not None
    status = Path(f"/proc/{service.api.pid}/status").read_text()
    found = {name: int(value) * 1024 for name, value in re.findall(r"(VmRSS|VmHWM):\s+(\d+) kB", status)}
    return found["VmRSS"], found["VmHWM"]


def test_small_uploads_of_huge_pictures_are_decoded_within_a_bounded_memory(
    open_service: Service, open_client: httpx.Client
) -> None:
    """The finding: an 80 KB 16-bit grey PNG of 6324x6324 took the API from 0.10 to 1.19 GB; three
    at once to 2.63 GB, and 564 MB stayed."""
    grey = png_bytes(Image.fromarray(np.full((6324, 6324), 1000, dtype=np.uint16)))
    assert len(grey) < 200_000
    assert open_service.api is not None
    Path(f"/proc/{open_service.api.pid}/clear_refs").write_text("5")  # the peak starts from now
    before, _ = api_memory(open_service)
    answers: list[int] = []

    def send() -> None:
        with httpx.Client(base_url=open_service.url, timeout=300) as http:
            answer = post_job(http, grey, [SMALL_PNG], {"iterations": 10})
            answers.append(answer.status_code)
            if answer.status_code == 202:
                http.post(f"/jobs/{answer.json()['id']}/cancel")

    threads = [threading.Thread(target=send) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after, peak = api_memory(open_service)
    assert answers == [202, 202, 202]
    assert peak - before < 400_000_000, f"decoding took {(peak - before) / 1e6:.0f} MB"
    assert after - before < 100_000_000, f"{(after - before) / 1e6:.0f} MB stayed after the decodes"


# -- 4. requests from other web pages, and other host names ------------------------------------------


def test_hosts_other_than_ip_addresses_localhost_and_the_allowed_names_are_refused(
    open_service: Service, open_client: httpx.Client
) -> None:
    for host in ("attacker.example", "attacker.example:8000", "localhost.attacker.example", "nst.example.com.evil"):
        answer = open_client.get("/jobs", headers={"Host": host})  # DNS rebinding would read every job
        assert answer.status_code == 421, host
        assert answer.json()["type"] == "/problems/unknown-host"
    port = open_service.api_port
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        "localhost",
        "[::1]",
        "nst.example.com",
        "a.nst.example.org",
    ):
        assert open_client.get("/jobs", headers={"Host": host}).status_code == 200, host


def test_a_page_of_another_origin_cannot_submit_or_cancel_in_the_open_mode(
    open_service: Service, open_client: httpx.Client
) -> None:
    evil = {"Origin": "http://evil.example"}
    refused = post_job(open_client, SMALL_PNG, [SMALL_PNG], LONG, headers=evil)
    assert refused.status_code == 403 and refused.json()["type"] == "/problems/cross-origin"
    same = {"Origin": f"http://127.0.0.1:{open_service.api_port}"}
    job = post_job(open_client, SMALL_PNG, [SMALL_PNG], LONG, headers=same)
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    assert open_client.post(f"/jobs/{job_id}/cancel", headers={"Origin": "null"}).status_code == 403
    assert open_client.post(f"/jobs/{job_id}/cancel", headers=evil).status_code == 403
    assert open_client.get(f"/jobs/{job_id}").json()["status"] == "queued"
    allowed = open_client.post(f"/jobs/{job_id}/cancel", headers={"Origin": "http://front.example"})
    assert allowed.status_code == 202 and allowed.json()["status"] == "canceled"
    listed = [job["id"] for job in open_client.get("/jobs", params={"limit": 100}).json()["items"]]
    assert len(listed) == len(set(listed)) and job_id in listed  # the refused submission stored nothing
    assert open_client.get("/jobs", headers=evil).status_code == 200  # reading is for CORS to allow or not


# -- 5. headers: how large, how slow ----------------------------------------------------------------


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout: a hang)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def test_an_endless_header_is_refused_and_costs_the_api_no_memory(open_service: Service) -> None:
    before, _ = api_memory(open_service)
    answers = []
    for _ in range(4):
        with socket.create_connection(("127.0.0.1", open_service.api_port), timeout=120) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            try:
                for _ in range(100 * 16):  # 100 MB, as the finding sent
                    sock.sendall(b"a" * 65536)
            except OSError:
                pass  # the server answered and closed: the rest was never read
            answers.append(read_until_closed(sock))
    after, _ = api_memory(open_service)
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
        assert b"/problems/headers-too-large" in answer
    assert after - before < 50_000_000


def test_a_connection_that_sends_half_a_header_is_closed(open_service: Service) -> None:
    with socket.create_connection(("127.0.0.1", open_service.api_port), timeout=120) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0")  # then nothing (NST_HEADER_TIMEOUT_SECONDS=2)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408") and b"/problems/header-timeout" in answer
    with socket.create_connection(("127.0.0.1", open_service.api_port), timeout=120) as sock:
        assert read_until_closed(sock) == b""  # one that sends nothing at all: closed, nothing to answer


def test_headers_over_the_limit_that_arrive_whole_are_refused_too(open_service: Service) -> None:
    with socket.create_connection(("127.0.0.1", open_service.api_port), timeout=120) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 431") and answer.count(b"HTTP/1.1") == 1, answer[:300]
    assert b"x-frame-options: DENY" in answer  # made by the server protocol, with the security headers
    log = (open_service.root / "api.log").read_text()
    assert "Invalid HTTP request received" not in log


# -- 6. what a browser is told ---------------------------------------------------------------------


def test_every_answer_carries_security_headers(open_client: httpx.Client) -> None:
    for path in ("/", "/docs", "/redoc", "/jobs", "/healthz", "/problems/not-found", "/static/app.js", "/nowhere"):
        answer = open_client.get(path)
        headers = answer.headers
        assert headers["x-content-type-options"] == "nosniff", path
        assert headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
        policy = headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy, path
        if headers["content-type"].startswith("text/html"):
            assert "default-src 'self'" in policy and "object-src 'none'" in policy, path
            assert "'unsafe-eval'" not in policy, path
        else:
            assert policy.startswith("default-src 'none'"), path
    docs = open_client.get("/docs").headers["content-security-policy"]
    assert re.search(r"script-src 'self' 'sha256-[A-Za-z0-9+/=]+'", docs) and "'unsafe-inline'" not in docs


# -- 7. errors that were 500s ------------------------------------------------------------------------


def test_params_nested_ten_thousand_deep_are_a_422(open_client: httpx.Client) -> None:
    files = [("content", ("c.png", SMALL_PNG)), ("style", ("s.png", SMALL_PNG))]
    answer = open_client.post("/jobs", files=files, data={"params": "[" * 10_000 + "]" * 10_000})
    assert answer.status_code == 422 and answer.json()["errors"] == [
        {"field": "params", "message": "nested too deeply"}
    ]


def test_a_params_part_of_five_megabytes_is_a_413_that_says_so(open_client: httpx.Client) -> None:
    files = [
        ("content", ("c.png", SMALL_PNG)),
        ("style", ("s.png", SMALL_PNG)),
        ("params", ("params.json", b"{" + b" " * 5_000_000 + b"}", "application/json")),
    ]
    answer = open_client.post("/jobs", files=files)
    assert answer.status_code == 413
    assert answer.json()["detail"] == "params: the JSON part is larger than 65536 bytes"


def test_layer_weights_whose_product_is_infinite_are_refused_at_submit(open_client: httpx.Client) -> None:
    answer = post_job(open_client, SMALL_PNG, [SMALL_PNG], {"style_layer_weights": [1e308] * 5})
    assert answer.status_code == 422
    assert "style_weight x style_layer_weights[0]" in answer.json()["detail"]


def test_a_job_whose_losses_are_all_infinite_fails_as_diverged(clients: dict[str, httpx.Client]) -> None:
    grace = clients["grace"]
    params = {**SHORT, "style_weight": 1e300, "style_layer_weights": [1e7] * 5}  # finite, but not its losses
    job = post_job(grace, SMALL_PNG, [SMALL_PNG], params)
    assert job.status_code == 202, job.text
    final = poll(grace, job.json()["id"], is_final, timeout=300)
    assert final["status"] == "failed" and final["error"]["type"] == "/problems/diverged", final
    assert grace.get(f"/jobs/{final['id']}/result").status_code == 409


def test_a_client_that_leaves_mid_upload_is_neither_a_500_nor_a_traceback(
    open_service: Service, open_client: httpx.Client
) -> None:
    head = (
        "POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
        'Content-Length: 5000000\r\n\r\n--x\r\nContent-Disposition: form-data; name="content"; filename="c.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", open_service.api_port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\x89PNG" + b"x" * 100_000)
    # The API has seen the disconnect once the metrics count it (a few polls at most).
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        metrics = open_client.get("/metrics").text
        if 'route="/jobs",status="499"' in metrics:
            break
        time.sleep(0.2)
    assert re.search(r'nst_http_requests_total\{method="POST",route="/jobs",status="499"\} 1\.0', metrics), metrics
    assert 'route="/jobs",status="500"' not in metrics
    log = (open_service.root / "api.log").read_text()
    assert "Exception in ASGI application" not in log and "Traceback" not in log


def test_jobs_an_earlier_version_queued_join_the_fair_queue_when_a_worker_starts(redis_db: redis.Redis) -> None:
    """An upgrade: the queue holds jobs written before tenant queues existed; a worker of this
    version must still run them, at their place."""
    from jobs.keys import OPEN_TENANT, QUEUE_KEY, TENANTS_KEY, tenant_queue_key
    from jobs.record import JobRecord, new_job_id
    from jobs.store import JobStore

    store = JobStore(redis_db, 3600)
    older, newer = (JobRecord(id=new_job_id(), params={"iterations": 5}, style_count=1) for _ in range(2))
    for record in (older, newer):
        store.create(record, b"content", [b"style"])
    store.redis.delete(tenant_queue_key(OPEN_TENANT), TENANTS_KEY)  # as an earlier version left them
    assert store.claim_next({"status": "running"}, "token", 30) is None
    assert store.adopt_queued() == 2 and store.adopt_queued() == 0
    assert store.queue_position(older.id) == 1 and store.queue_position(newer.id) == 2
    claimed = store.claim_next({"status": "running"}, "token", 30)
    assert claimed == (older.id, 1)
    assert store.redis.zrange(QUEUE_KEY, 0, -1) == [newer.id.encode()]


# -- what must hold when a call to Redis is made twice (its reply lost), and other edges -----------


@pytest.fixture
def empty_redis(redis_db: redis.Redis) -> redis.Redis:
    """The session's redis-server, database 0, empty (tests/conftest.py)."""
    return redis_db


def test_admitting_the_same_job_twice_takes_its_bytes_and_place_once(empty_redis: redis.Redis) -> None:
    limits = TenantLimits(empty_redis, 3600, Limits(5, 100, 10_000))
    assert limits.admit("k-replay", "a" * 32, 1000) is None
    assert limits.admit("k-replay", "a" * 32, 1000) is None  # the same call again
    assert limits.held_bytes("k-replay") == 1000 and limits.active_jobs("k-replay") == 1


def test_a_claim_or_a_finish_made_twice_changes_nothing_the_second_time(empty_redis: redis.Redis) -> None:
    from jobs.keys import checkpoint_key, result_key
    from jobs.record import JobRecord, new_job_id
    from jobs.store import JobStore

    store = JobStore(empty_redis, 3600)
    first, second = (JobRecord(id=new_job_id(), params={"iterations": 5}, style_count=1) for _ in range(2))
    for record in (first, second):
        store.create(record, b"content", [b"style"])
    claimed = store.claim_next({"status": "running"}, "token-1", 30)
    assert claimed == (first.id, 1)
    assert store.claim_next({"status": "running"}, "token-1", 30) == claimed  # not the second job
    assert store.get(second.id).status == "queued"  # type: ignore[union-attr]
    store.save_checkpoint(first.id, b"state")
    assert store.finish(first.id, "succeeded", {}, "token-1", b"picture")
    assert store.finish(first.id, "succeeded", {}, "token-1", b"picture")  # its own finish, again
    assert empty_redis.get(result_key(first.id)) == b"picture"
    assert not empty_redis.exists(checkpoint_key(first.id)) and inputs_present(empty_redis, first.id) == [False, False]
    assert not store.finish(first.id, "succeeded", {}, "another run", b"other")  # not another run's
    assert empty_redis.get(result_key(first.id)) == b"picture"


def test_a_stale_id_at_the_head_of_a_queue_holds_back_no_job(empty_redis: redis.Redis) -> None:
    from jobs.keys import OPEN_TENANT, QUEUE_KEY, tenant_queue_key
    from jobs.record import JobRecord, new_job_id
    from jobs.store import JobStore

    store = JobStore(empty_redis, 3600)
    waiting = JobRecord(id=new_job_id(), params={"iterations": 5}, style_count=1)
    store.create(waiting, b"content", [b"style"])
    stale = [f"{index:032x}" for index in range(300)]  # ids whose jobs expired, ahead of it
    empty_redis.zadd(tenant_queue_key(OPEN_TENANT), {job_id: -1 for job_id in stale})
    empty_redis.zadd(QUEUE_KEY, {job_id: -1 for job_id in stale})
    assert store.claim_next({"status": "running"}, "token-2", 30) == (waiting.id, 1)
    assert empty_redis.zcard(QUEUE_KEY) == 0 and empty_redis.zcard(tenant_queue_key(OPEN_TENANT)) == 0


def test_a_progressive_jpeg_is_charged_all_its_pixels() -> None:
    from core.decode import decoded_pixels

    assert decoded_pixels(8000, 5000, "JPEG") == 1000 * 625
    assert decoded_pixels(8000, 5000, "JPEG", progressive=True) == 8000 * 5000 * 3 // 2
    assert decoded_pixels(8000, 5000, "PNG") == 8000 * 5000


def test_any_origin_allowed_by_cors_may_change_things_too() -> None:
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from api.security import RequestGuard

    async def ok(request: Any) -> PlainTextResponse:
        return PlainTextResponse("ok")

    def status(origins: list[str], origin: str) -> int:
        app = RequestGuard(Starlette(routes=[Route("/", ok, methods=["POST"])]), [], origins)

        async def call() -> int:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as client:
                return (await client.post("/", headers={"Origin": origin})).status_code

        return asyncio.run(call())

    assert status(["*"], "http://anywhere.example") == 200
    assert status(["http://front.example"], "http://anywhere.example") == 403
    assert status(["http://front.example/"], "http://FRONT.example") == 200
    assert status([], "https://127.0.0.1:8000") == 200  # TLS ended at a proxy: the scheme may differ


def test_a_checkpoint_this_version_cannot_read_starts_the_job_over(
    empty_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """After an upgrade a resumed job may find a checkpoint of another version's making."""
    import logging

    from jobs.record import JobRecord, new_job_id
    from jobs.settings import Settings
    from jobs.store import JobStore
    from worker.context import WorkerContext
    from worker.runner import run_job

    port = empty_redis.connection_pool.connection_kwargs["port"]
    settings = Settings(redis_url=f"redis://127.0.0.1:{port}/0", device="cpu")
    store = JobStore(empty_redis, 3600)
    record = JobRecord(id=new_job_id(), params={"iterations": 3, "height": 16, "width": 16}, style_count=1)
    store.create(record, SMALL_PNG, [SMALL_PNG])
    store.save_checkpoint(record.id, b"not a checkpoint of this version")
    caplog.set_level(logging.WARNING, logger="worker.runner")
    run_job(record.id, WorkerContext(settings, store, "test-worker"))
    finished = store.get(record.id)
    assert finished is not None and finished.status == "succeeded", finished
    assert "cannot be read" in caplog.text
