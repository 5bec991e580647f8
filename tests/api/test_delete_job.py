"""DELETE /jobs/{id}: the owner's key removes a queued, a finished or a running job (which stops),
with everything Redis holds of it and its objects in the blob store; 204, then 404. Another key's
job is 404 and stays whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest
import redis

from api.keys_file import add_key
from jobs.keys import (
    JOBS_KEY,
    QUEUE_KEY,
    RUNNING_KEY,
    TENANTS_KEY,
    WEBHOOK_EVENTS,
    cancel_key,
    job_keys,
    owner_jobs_key,
    tenant_queue_key,
    webhook_sent_key,
)
from jobs.store import DELETED_FLAG_SECONDS
from jobs.tenancy import Limits, TenantLimits
from jobs.webhooks import WebhookEvent
from tests.conftest import SAMPLES
from tests.services import Service, StartService, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
SHORT = {"iterations": 10, "height": 32, "width": 32, "snapshot_every": 5}
# Hours on a CPU: if a deleted running job did not stop, the one worker would never take the next.
LONG = {"iterations": 20000, "height": 192, "width": 192, "snapshot_every": 2}


def keys_of(db: redis.Redis, job_id: str) -> list[bytes]:
    return sorted(db.scan_iter(match=f"*{job_id}*"))


def objects_of(stack: Service, job_id: str) -> list[Path]:
    folder = stack.root / "blobs" / "jobs" / job_id
    return list(folder.rglob("*")) if folder.exists() else []


def test_deleting_a_job_removes_every_webhook_guard() -> None:
    assert set(WEBHOOK_EVENTS) == set(get_args(WebhookEvent))
    assert {webhook_sent_key("a" * 32, event) for event in WEBHOOK_EVENTS} <= set(job_keys("a" * 32))


# -- with API keys, no worker: a queued job ------------------------------------------------------


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("delete-keys") / "keys.jsonl"


@pytest.fixture(scope="module")
def keys(keys_file: Path) -> dict[str, tuple[str, str]]:
    """name -> (the key's id, the key), made before the stack starts."""
    made = {name: add_key(keys_file, name) for name in ("alice", "bob")}
    return {name: (record.id, key) for name, (record, key) in made.items()}


@pytest.fixture(scope="module")
def keyed(start_service: StartService, keys_file: Path, keys: dict[str, tuple[str, str]]) -> Service:
    return start_service({"NST_API_KEYS_FILE": str(keys_file)}, workers=0)


@pytest.fixture(scope="module")
def clients(keyed: Service, keys: dict[str, tuple[str, str]]) -> Iterator[dict[str, httpx.Client]]:
    made = {
        name: httpx.Client(base_url=keyed.url, timeout=60, headers={"Authorization": f"Bearer {key}"})
        for name, (_, key) in keys.items()
    }
    yield made
    for client in made.values():
        client.close()


def test_a_queued_job_is_deleted_by_its_owner_only(
    keyed: Service, keys: dict[str, tuple[str, str]], clients: dict[str, httpx.Client]
) -> None:
    stack, alice_id = keyed, keys["alice"][0]
    alice, bob = clients["alice"], clients["bob"]
    answer = submit(alice, COFFEE, [STARRY], SHORT)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    assert objects_of(stack, job_id)

    refused = bob.delete(f"/jobs/{job_id}")
    assert refused.status_code == 404 and refused.json()["type"] == "/problems/not-found"
    assert alice.get(f"/jobs/{job_id}").json()["status"] == "queued" and objects_of(stack, job_id)

    deleted = alice.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert alice.get(f"/jobs/{job_id}").status_code == 404
    assert alice.delete(f"/jobs/{job_id}").status_code == 404
    assert alice.delete("/jobs/not-a-job").status_code == 404
    assert job_id not in [job["id"] for job in alice.get("/jobs").json()["items"]]
    assert objects_of(stack, job_id) == []
    with redis.Redis.from_url(stack.redis_url) as db:
        assert keys_of(db, job_id) == []
        assert db.zcard(QUEUE_KEY) == 0 and db.zcard(JOBS_KEY) == 0 and db.scard(RUNNING_KEY) == 0
        assert db.zcard(tenant_queue_key(alice_id)) == 0 and db.zcard(TENANTS_KEY) == 0
        assert db.zcard(owner_jobs_key(alice_id)) == 0
        limits = TenantLimits(db, 3600, Limits(None, 1000, 10**12))
        assert limits.held_bytes(alice_id) == 0 and limits.active_jobs(alice_id) == 0


# -- the shared stack (one worker): a finished job and a running one ------------------------------


@pytest.fixture(scope="module")
def db(service: Service) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(service.redis_url)
    yield client
    client.close()


def test_a_finished_job_is_deleted_with_its_snapshots_result_and_objects(
    service: Service, client: httpx.Client, db: redis.Redis
) -> None:
    answer = submit(client, COFFEE, [STARRY], SHORT)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    done = poll(client, job_id, is_final)
    assert done["status"] == "succeeded" and done["snapshots"], (done, service.logs())
    assert keys_of(db, job_id)

    deleted = client.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert client.get(f"/jobs/{job_id}").status_code == 404
    assert client.get(f"/jobs/{job_id}/result").status_code == 404
    assert client.get(f"/jobs/{job_id}/snapshots/latest").status_code == 404
    assert keys_of(db, job_id) == []
    assert objects_of(service, job_id) == []


def wait_for_running_with_a_snapshot(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """The job's event stream until it is running and has stored a snapshot (a checkpoint too, by then)."""
    with client.stream("GET", f"/jobs/{job_id}/events") as events:
        for line in events.iter_lines():
            if line.startswith("event: snapshot"):
                break
            assert line != "event: end", "the job ended before it was deleted"
    job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "running" and job["snapshots"], job
    return job


def test_a_running_job_stops_when_deleted(service: Service, client: httpx.Client, db: redis.Redis) -> None:
    answer = submit(client, COFFEE, [STARRY], LONG)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["id"]
    wait_for_running_with_a_snapshot(client, job_id)

    deleted = client.delete(f"/jobs/{job_id}")
    assert deleted.status_code == 204, deleted.text
    assert client.get(f"/jobs/{job_id}").status_code == 404
    # The stack's one worker takes the next job only once the deleted one has stopped.
    after = submit(client, COFFEE, [STARRY], SHORT)
    assert after.status_code == 202, after.text
    done = poll(client, after.json()["id"], is_final)
    assert done["status"] == "succeeded", (done, service.logs())

    # Nothing of it is left but the flag that told its run to stop, which expires soon.
    assert keys_of(db, job_id) in ([], [cancel_key(job_id).encode()])
    assert 0 < int(db.ttl(cancel_key(job_id))) <= DELETED_FLAG_SECONDS or not db.exists(cancel_key(job_id))
    assert not db.sismember(RUNNING_KEY, job_id) and job_id.encode() not in db.zrange(QUEUE_KEY, 0, -1)
    assert objects_of(service, job_id) == []
