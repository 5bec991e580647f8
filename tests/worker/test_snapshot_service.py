"""Snapshots written off the loop, through the real service, with a writer made slow on purpose
(NST_TEST_WRITE_DELAY_SECONDS sleeps before each progress write)."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import SAMPLES
from tests.services import Service, StartService, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"
DELAY = 0.4  # seconds per write: the writer falls behind a 32x32 loop at once


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    return start_service({"NST_TEST_WRITE_DELAY_SECONDS": str(DELAY)})


def test_a_slow_writer_still_stores_every_snapshot_in_order_before_the_job_succeeds(
    service: Service, client: httpx.Client
) -> None:
    params = {"iterations": 60, "height": 32, "width": 32, "snapshot_every": 10, "seed": 1}
    job = submit(client, COFFEE, [STARRY], params).json()
    seen: list[dict] = []
    done = poll(client, job["id"], is_final, seen=seen)
    assert done["status"] == "succeeded", service.logs()
    assert [s["iteration"] for s in done["snapshots"]] == [1, 10, 20, 30, 40, 50, 60]
    listed = [[s["iteration"] for s in j["snapshots"]] for j in seen]
    assert all(a == b[: len(a)] for a, b in itertools.pairwise(listed))  # only ever appended, in order
    for snapshot in done["snapshots"]:
        assert client.get(snapshot["url"]).status_code == 200
    assert done["progress"]["iteration"] == 60
    result = Image.open(io.BytesIO(client.get(done["result_url"]).content))
    assert result.size == (600, 400)


def test_a_phone_photo_gets_screen_sized_snapshots_and_a_full_size_result(
    service: Service, client: httpx.Client, tmp_path: Path
) -> None:
    photo = tmp_path / "phone.jpg"
    Image.open(COFFEE).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC).save(photo, quality=85)
    job = submit(client, photo, [STARRY], {"iterations": 50, "height": 32, "width": 32}).json()
    done = poll(client, job["id"], is_final)
    assert done["status"] == "succeeded", service.logs()
    for snapshot in done["snapshots"]:
        image = Image.open(io.BytesIO(client.get(snapshot["url"]).content))
        assert image.size == (1024, 768)  # NST_SNAPSHOT_MAX_SIDE, the aspect kept
    result = Image.open(io.BytesIO(client.get(done["result_url"]).content))
    assert result.size == (4000, 3000)


def test_cancel_during_a_slow_write_ends_the_job_with_no_snapshot_missing(
    service: Service, client: httpx.Client
) -> None:
    # The README's "within a second" is a timing, for bench/: here, what the job keeps.
    params = {"iterations": 5000, "height": 32, "width": 32, "snapshot_every": 5}
    job = submit(client, COFFEE, [STARRY], params).json()
    poll(client, job["id"], lambda j: len(j["snapshots"]) >= 2)
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 202
    done = poll(client, job["id"], is_final)
    assert done["status"] == "canceled", done
    assert done["progress"]["iteration"] < params["iterations"]
    # The worker has run another job since: anything the canceled run was still writing has landed.
    following = submit(client, COFFEE, [STARRY], {"iterations": 1, "height": 16, "width": 16}).json()
    assert poll(client, following["id"], is_final)["status"] == "succeeded"
    after = client.get(f"/jobs/{job['id']}").json()
    assert after["snapshots"] == done["snapshots"]  # nothing written after the end
    for snapshot in after["snapshots"]:
        assert client.get(snapshot["url"]).status_code == 200, snapshot
