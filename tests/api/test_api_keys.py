"""API keys and tenancy: the keys file and `nst keys`, then the real stack (redis-server, a Celery
worker, uvicorn) with NST_API_KEYS_FILE set: 401 without a known key, each key sees only its own
jobs, the per-key limit, keys that change without a restart, and the key's clear text nowhere
in Redis or the logs. Last, the web page asking for a key."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from api.keys_file import KeyRing, KeysFileError, add_key, hash_key, read_keys, remove_key, write_keys
from core.cli import main
from jobs.tenancy import Limits, TenantLimits
from tests.conftest import ROOT, SAMPLES
from tests.services import HANG, Service, StartService, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
SHORT = {"iterations": 40, "height": 32, "width": 32, "snapshot_every": 20}
LONG = {"iterations": 20000, "height": 32, "width": 32}  # runs until canceled
LIMIT = 2  # NST_MAX_ACTIVE_JOBS_PER_KEY of the service below
UNKNOWN_JOB = "0" * 32


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# -- the keys file -------------------------------------------------------------------------------


def test_keys_are_added_listed_and_removed_and_only_their_hashes_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    alice, alice_key = add_key(path, "alice")
    bob, bob_key = add_key(path, "bob")
    assert alice_key.startswith("nst_") and len(alice_key) > 40 and alice_key != bob_key
    assert [k.name for k in read_keys(path)] == ["alice", "bob"]
    assert alice.id != bob.id and alice.created_at.endswith("Z")
    text = path.read_text()
    assert alice_key not in text and bob_key not in text
    assert hash_key(alice_key) in text and [json.loads(line)["sha256"] for line in text.splitlines()] == [
        hash_key(alice_key),
        hash_key(bob_key),
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keys")] == []  # no temporary file left

    with pytest.raises(KeysFileError, match="exists already"):
        add_key(path, "alice")
    with pytest.raises(KeysFileError, match="a name is"):
        add_key(path, "two words")
    assert remove_key(path, "alice").id == alice.id
    assert [k.name for k in read_keys(path)] == ["bob"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeysFileError, match="no key named"):
        remove_key(path, "alice")


def test_a_malformed_keys_file_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    add_key(path, "alice")
    path.write_text(path.read_text() + "\nnot json\n")
    with pytest.raises(KeysFileError, match="line 3"):
        read_keys(path)
    with pytest.raises(KeysFileError):
        KeyRing(path)  # the API does not start on a file it cannot read


def test_the_key_ring_follows_the_file_and_keeps_the_last_good_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    ring = KeyRing(path, check_seconds=0)
    assert ring.keys == ()  # no file yet: no key is accepted
    alice, alice_key = add_key(path, "alice")
    found = ring.lookup(alice_key)
    assert found is not None and found.id == alice.id
    assert ring.lookup(alice_key + "x") is None and ring.lookup("") is None and ring.lookup("x" * 10_000) is None
    good = path.read_text()
    path.write_text("{broken\n")
    assert ring.lookup(alice_key) is not None  # a bad edit keeps the keys read before
    path.write_text(good)
    remove_key(path, "alice")
    assert ring.lookup(alice_key) is None


def test_the_key_ring_reads_the_file_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "keys.jsonl"
    _, alice_key = add_key(path, "alice")
    ring = KeyRing(path, check_seconds=3600)
    write_keys(path, [])
    assert ring.lookup(alice_key) is not None  # not looked at again yet


def test_nst_keys_add_prints_the_key_once_on_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.jsonl"
    env = {"PATH": "/usr/bin:/bin", "NST_API_KEYS_FILE": str(path), "PYTHONPATH": str(ROOT)}
    made = subprocess.run(
        [sys.executable, "-m", "core.cli", "keys", "add", "alice"], env=env, capture_output=True, text=True, check=True
    )
    key = made.stdout.strip()
    assert made.stdout == key + "\n" and key.startswith("nst_")  # the key and nothing else
    assert key not in made.stderr and "alice" in made.stderr
    assert read_keys(path)[0].sha256 == hash_key(key)

    again = subprocess.run([sys.executable, "-m", "core.cli", "keys", "add", "alice"], env=env, capture_output=True)
    assert again.returncode == 1 and again.stdout == b"" and b"exists already" in again.stderr

    assert main(["keys", "list", "--file", str(path)]) == 0
    listing = capsys.readouterr().out
    record = read_keys(path)[0]
    assert "alice" in listing and record.id in listing and record.created_at in listing
    assert record.sha256 not in listing and key not in listing
    assert main(["keys", "remove", "alice", "--file", str(path)]) == 0
    assert read_keys(path) == []
    assert main(["keys", "remove", "alice", "--file", str(path)]) == 1


# -- the service with keys -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys") / "api-keys.jsonl"


@pytest.fixture(scope="module")
def keys(keys_file: Path) -> dict[str, str]:
    """name -> key, made before the service starts."""
    return {name: add_key(keys_file, name)[1] for name in ("alice", "bob", "carol")}


@pytest.fixture(scope="module")
def service(start_service: StartService, keys_file: Path, keys: dict[str, str]) -> Service:
    return start_service({"NST_API_KEYS_FILE": str(keys_file), "NST_MAX_ACTIVE_JOBS_PER_KEY": str(LIMIT)})


@pytest.fixture(scope="module")
def clients(service: Service, keys: dict[str, str]) -> Iterator[dict[str, httpx.Client]]:
    made = {name: httpx.Client(base_url=service.url, timeout=30, headers=bearer(key)) for name, key in keys.items()}
    made["anonymous"] = httpx.Client(base_url=service.url, timeout=30)
    yield made
    for client in made.values():
        client.close()


@pytest.fixture(scope="module")
def alice_job(service: Service, clients: dict[str, httpx.Client]) -> dict[str, Any]:
    """A job of alice's that has run to its end, with snapshots and a result."""
    answer = submit(clients["alice"], COFFEE, [STARRY], SHORT)
    assert answer.status_code == 202, answer.text
    done = poll(clients["alice"], answer.json()["id"], is_final)
    assert done["status"] == "succeeded", service.logs()
    return done


def assert_unauthorized(answer: httpx.Response, error: str | None) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"] == "/problems/unauthorized" and answer.json()["status"] == 401
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="nst"')
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)


def jobs_operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every operation under /jobs/{job_id}, from the live document."""
    return [
        (method, path)
        for path, operations in document["paths"].items()
        if path.startswith("/jobs/{job_id}")
        for method in operations
    ]


def test_without_a_key_or_with_an_unknown_one_every_jobs_route_is_401(
    clients: dict[str, httpx.Client], alice_job: dict[str, Any]
) -> None:
    anonymous = clients["anonymous"]
    stranger = {"Authorization": "Bearer nst_" + "x" * 43}
    document = anonymous.get("/openapi.json").json()
    routes = [("get", "/jobs"), ("post", "/jobs"), *jobs_operations(document)]
    assert len(routes) >= 8
    for method, template in routes:
        url = template.replace("{job_id}", alice_job["id"]).replace("{iteration}", "latest")
        assert_unauthorized(anonymous.request(method, url), None)
        assert_unauthorized(anonymous.request(method, url, headers=stranger), "invalid_token")
        assert_unauthorized(anonymous.request(method, url, headers={"Authorization": "Basic YWxpY2U6eA=="}), None)
    assert_unauthorized(submit(anonymous, COFFEE, [STARRY], SHORT), None)


def test_the_open_routes_stay_open(clients: dict[str, httpx.Client]) -> None:
    anonymous = clients["anonymous"]
    for path in ("/healthz", "/readyz", "/", "/docs", "/openapi.json", "/parameters", "/problems/unauthorized"):
        assert anonymous.get(path).status_code == 200, path


def test_the_openapi_document_declares_the_bearer_scheme(clients: dict[str, httpx.Client]) -> None:
    document = clients["anonymous"].get("/openapi.json").json()
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from `nst keys add NAME`, as `Authorization: Bearer KEY`",
    }
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.split("/")[1] in ("jobs", "sweeps"):
                assert operation["security"] == [{"bearer": []}], path
                assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
            else:
                assert "security" not in operation and "401" not in operation["responses"], path


def test_a_job_is_404_for_another_key_on_every_route(
    clients: dict[str, httpx.Client], alice_job: dict[str, Any]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    missing = bob.get(f"/jobs/{UNKNOWN_JOB}").json()
    document = alice.get("/openapi.json").json()
    for method, template in jobs_operations(document):
        for iteration in ("latest", "1", "20"):
            url = template.replace("{job_id}", alice_job["id"]).replace("{iteration}", iteration)
            answer = bob.request(method, url)
            assert answer.status_code == 404, (method, url, answer.text)
            body = answer.json()
            assert {k: v for k, v in body.items() if k != "instance"} == {
                k: v for k, v in missing.items() if k != "instance"
            }, url
            if method != "delete":  # alice's own DELETE would remove the job the next checks use
                assert alice.request(method, url).status_code in (200, 409), (method, url)  # 409: cancel a finished job
    # Bob's cancel changed nothing; alice still has her job whole.
    job = alice.get(f"/jobs/{alice_job['id']}").json()
    assert job["status"] == "succeeded" and job["snapshots"] == alice_job["snapshots"]
    assert alice.get(f"/jobs/{alice_job['id']}/result").headers["content-type"] == "image/png"
    events = alice.get(f"/jobs/{alice_job['id']}/events")
    assert events.status_code == 200 and "event: end" in events.text


def test_each_key_lists_only_its_own_jobs(clients: dict[str, httpx.Client], alice_job: dict[str, Any]) -> None:
    alice, bob = clients["alice"], clients["bob"]
    bobs = submit(bob, COFFEE, [STARRY], LONG).json()
    try:
        assert bob.post(f"/jobs/{bobs['id']}/cancel").status_code == 202
        alice_ids = [job["id"] for job in alice.get("/jobs", params={"limit": 100}).json()["items"]]
        bob_ids = [job["id"] for job in bob.get("/jobs", params={"limit": 100}).json()["items"]]
        assert alice_job["id"] in alice_ids and bobs["id"] not in alice_ids
        assert bob_ids == [bobs["id"]]
        # Pages: the cursor walks the key's own index.
        first = bob.get("/jobs", params={"limit": 1}).json()
        assert [job["id"] for job in first["items"]] == [bobs["id"]] and first["next_cursor"] is None
    finally:
        bob.post(f"/jobs/{bobs['id']}/cancel")


def test_past_the_per_key_limit_a_submission_is_429_with_retry_after(
    clients: dict[str, httpx.Client], alice_job: dict[str, Any]
) -> None:
    carol, alice = clients["carol"], clients["alice"]
    accepted: list[str] = []
    try:
        for _ in range(LIMIT):
            answer = submit(carol, COFFEE, [STARRY], LONG)
            assert answer.status_code == 202, answer.text
            accepted.append(answer.json()["id"])
        refused = submit(carol, COFFEE, [STARRY], LONG)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) > 0
        assert refused.json()["type"] == "/problems/too-many-active-jobs" and refused.json()["limit"] == LIMIT
        # Another key is not held back by carol's jobs.
        other = submit(alice, COFFEE, [STARRY], LONG)
        assert other.status_code == 202, other.text
        assert alice.post(f"/jobs/{other.json()['id']}/cancel").status_code == 202
        # A job that ends gives its place back.
        assert carol.post(f"/jobs/{accepted[0]}/cancel").status_code == 202
        poll(carol, accepted[0], is_final)
        again = submit(carol, COFFEE, [STARRY], LONG)
        assert again.status_code == 202, again.text
        accepted.append(again.json()["id"])
    finally:
        for job_id in accepted:
            carol.post(f"/jobs/{job_id}/cancel")


def test_concurrent_submissions_cannot_pass_the_limit_together(redis_db: redis.Redis) -> None:
    places = TenantLimits(redis_db, 600, Limits(3, 1000, 10**9))
    results: list[int | None] = []
    start = threading.Barrier(12)

    def take(index: int) -> None:
        start.wait()
        refusal = places.admit("k-concurrent", f"{index:032x}", 10)
        results.append(None if refusal is None else refusal.value)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(None) == 3 and places.active_jobs("k-concurrent") == 3
    assert places.held_bytes("k-concurrent") == 30
    assert all(result == 3 for result in results if result is not None)


def test_keys_added_and_removed_while_the_api_runs_take_effect_without_a_restart(
    service: Service, keys_file: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "NST_API_KEYS_FILE": str(keys_file), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "core.cli", "keys"]
    key = subprocess.run([*command, "add", "dave"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    with httpx.Client(base_url=service.url, timeout=30, headers=bearer(key)) as dave:
        assert wait_for_status(dave, 200) == 200
        assert dave.get("/jobs").json()["items"] == []
        subprocess.run([*command, "remove", "dave"], env=env, capture_output=True, check=True)
        assert wait_for_status(dave, 401) == 401


def wait_for_status(client: httpx.Client, status: int, timeout: float = HANG) -> int:
    """GET /jobs until it answers `status` (the API looks at the file at most once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/jobs")
        if answer.status_code == status or time.monotonic() > deadline:
            return answer.status_code
        time.sleep(0.2)


def every_redis_value(client: redis.Redis) -> Iterator[bytes]:
    """Each key's name and every value in it, whatever its type."""
    for name in client.scan_iter(count=1000):
        yield name
        kind = client.type(name).decode()
        if kind == "string":
            yield client.get(name) or b""
        elif kind == "hash":
            for field, value in client.hgetall(name).items():
                yield field
                yield value
        elif kind == "list":
            yield from client.lrange(name, 0, -1)
        elif kind == "set":
            yield from client.smembers(name)
        elif kind == "zset":
            yield from (member for member, _ in client.zrange(name, 0, -1, withscores=True))
        elif kind == "stream":
            for _, fields in client.xrange(name):
                for field, value in fields.items():
                    yield field
                    yield value
        else:
            raise AssertionError(f"a Redis type this test does not read: {kind} ({name!r})")


def test_no_key_appears_in_redis_or_the_logs(
    service: Service, keys: dict[str, str], alice_job: dict[str, Any], clients: dict[str, httpx.Client]
) -> None:
    secrets = [key.encode() for key in keys.values()]
    hashes = [hash_key(key).encode() for key in keys.values()]
    client = redis.Redis.from_url(service.redis_url)
    values = list(every_redis_value(client))
    assert len(values) > 20  # jobs, their events, images, queues: the scan saw them
    for value in values:
        for secret in [*secrets, *hashes]:
            assert secret not in value
    # The job names its owner by the key's id, the only trace of the key.
    record = json.loads(client.hget(f"nst:job:{alice_job['id']}", "owner") or b"null")
    assert record == read_keys(Path(service.env()["NST_API_KEYS_FILE"]))[0].id
    logs = service.logs(tail=0)
    assert "GET /jobs" in logs  # the access log is in there
    for key in keys.values():
        assert key not in logs and hash_key(key) not in logs


# -- the web page ----------------------------------------------------------------------------------


@pytest.mark.browser
def test_the_page_asks_for_a_key_keeps_it_and_shows_the_job(
    service: Service, keys: dict[str, str], alice_job: dict[str, Any], tmp_path: Path
) -> None:
    from tests.api.browser import CHROMEDRIVER, CHROMIUM

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("no headless browser: chromium and chromedriver are needed")
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.api.browser import headless_chromium

    driver = headless_chromium(tmp_path / "profile")
    waiter = WebDriverWait(driver, HANG, poll_frequency=0.1)

    def testid(name: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, f"[data-testid='{name}']")

    def image_loaded(name: str) -> bool:
        return driver.execute_script(
            "const img = document.querySelector(`[data-testid='${arguments[0]}']`);"
            "return Boolean(img && img.complete && img.naturalWidth > 0 && img.src.startsWith('blob:'));",
            name,
        )

    try:
        driver.get(f"{service.url}/#/jobs/{alice_job['id']}")
        waiter.until(lambda d: testid("key-dialog").is_displayed(), "the page did not ask for a key")
        assert "needs an API key" in testid("key-dialog").text
        testid("key-input").send_keys(keys["alice"])
        testid("key-save").click()
        waiter.until(lambda d: testid("status").get_attribute("textContent") == "succeeded", "no job shown")
        waiter.until(lambda d: image_loaded("result"), "the result was not loaded with the key")
        assert driver.execute_script("return localStorage.getItem('nst-api-key')") == keys["alice"]
        assert testid("key-input").get_attribute("value") == ""  # not left in the page
        href = driver.find_element(By.ID, "job-download").get_attribute("href")
        assert href.startswith("blob:")

        # Kept: a new visit asks nothing, and the recent jobs are alice's, with their pictures.
        driver.get("about:blank")
        driver.get(f"{service.url}/")
        link = f"a[href='#/jobs/{alice_job['id']}']"
        waiter.until(lambda d: d.find_elements(By.CSS_SELECTOR, link), "alice's job is not listed")
        assert not testid("key-dialog").is_displayed()
        waiter.until(
            lambda d: d.execute_script(
                "const img = document.querySelector(arguments[0] + ' img');"
                "return Boolean(img && img.complete && img.naturalWidth > 0);",
                link,
            ),
            "the job's picture did not load",
        )
        assert testid("key-button").is_displayed()

        # A key the service does not know: it asks again, saying so.
        driver.execute_script("localStorage.setItem('nst-api-key', 'nst_unknown')")
        driver.refresh()
        waiter.until(lambda d: testid("key-dialog").is_displayed(), "an unknown key was not asked again")
        assert "did not accept" in testid("key-dialog").text
        severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert all(" 401 " in message for message in severe), severe  # only the 401s the test provoked
    finally:
        driver.quit()


def test_nst_submit_sends_nst_api_key(service: Service, keys: dict[str, str]) -> None:
    import os
    import subprocess
    import sys

    command = [sys.executable, "-m", "core.cli", "submit", str(COFFEE), str(STARRY), "--server", service.url,
               "--params", '{"iterations": 2, "height": 16, "width": 16}']  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "NST_API_KEY"}
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG)
    assert refused.returncode == 1 and "401" in refused.stderr, refused.stderr
    taken = subprocess.run(
        [*command, "--wait"], env=env | {"NST_API_KEY": keys["alice"]}, capture_output=True, text=True, timeout=HANG
    )
    assert taken.returncode == 0, taken.stderr
