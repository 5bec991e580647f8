"""`GET /jobs/{id}/timelapse` (issue 22): the job's snapshots as an animated WebP, in order, ending
with the result (held longer) once the job has succeeded; at most 100 frames; 404 for no job (or
another key's), 409 before the first snapshot; an ETag per state of the job, 304 for it.

First api/timelapse.py's picking and rendering; then the shared stack, with jobs written here as a
worker (or an earlier version) would leave them, and a job run to its end by the real worker; then
a stack with API keys.
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from api import timelapse
from api.keys_file import add_key
from jobs.keys import job_key, result_key, snapshot_key
from jobs.record import JobRecord, new_job_id
from tests.conftest import SAMPLES, gradient_image
from tests.services import Service, StartService, is_final, poll, submit

IMMUTABLE = "private, max-age=86400, immutable"


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind)
    return buffer.getvalue()


def snapshot_jpeg(seed: int, size: tuple[int, int] = (24, 20)) -> bytes:
    """A JPEG unlike any other seed's: every frame differs (WebP merges identical neighbours)."""
    return encoded(gradient_image(*size, seed=seed), "JPEG")


def frames_of(data: bytes) -> tuple[int, tuple[int, int], list[int]]:
    """An animated WebP's frame count, size and each frame's duration (ms)."""
    image = Image.open(io.BytesIO(data))
    assert image.format == "WEBP"
    count: int = getattr(image, "n_frames", 1)
    durations = []
    for index in range(count):
        image.seek(index)
        image.load()  # a frame's duration is known once it is read
        durations.append(image.info["duration"])
    return count, image.size, durations


def write_job(service: Service, status: str, snapshots: list[int], result: bool = False, **fields: object) -> str:
    """A job hash, its snapshots (distinct JPEGs) and its result in Redis, as a worker of the
    previous version (results in Redis) left them; returns its id."""
    record = JobRecord(
        id=new_job_id(), status=status, params={"iterations": max(snapshots, default=1)}, style_count=1,
        snapshots=snapshots, **fields,
    )  # fmt: skip
    with redis.Redis.from_url(service.redis_url) as client:
        client.hset(job_key(record.id), mapping=dict(record.to_redis()))
        for iteration in snapshots:
            client.set(snapshot_key(record.id, iteration), snapshot_jpeg(iteration))
        if result:
            client.set(result_key(record.id), encoded(gradient_image(48, 40, seed=999), "PNG"))
    return record.id


def test_frames_are_picked_evenly_keeping_the_first_and_the_last() -> None:
    assert timelapse.pick([1, 5, 10], 100) == [1, 5, 10]
    picked = timelapse.pick(list(range(1, 1001)), 99)
    assert len(picked) == 99 and picked[0] == 1 and picked[-1] == 1000 and picked == sorted(set(picked))
    gaps = {b - a for a, b in itertools.pairwise(picked)}
    assert max(gaps) - min(gaps) <= 1  # evenly
    assert timelapse.pick([1, 2, 3], 1) == [3] and timelapse.pick([1, 2], 0) == []
    assert timelapse.frame_size(1024, 768) == (512, 384) and timelapse.frame_size(48, 40) == (48, 40)


def test_a_render_has_a_frame_per_image_the_last_held_longer() -> None:
    assert timelapse.supported()  # this project's Pillow writes animated WebP
    result = encoded(gradient_image(96, 80, seed=50), "PNG")  # the result: at the content's full size
    data, count = timelapse.render([snapshot_jpeg(seed) for seed in range(4)], result)
    frames, size, durations = frames_of(data)
    assert count == frames == 5 and size == (24, 20)  # the snapshots' size, the result scaled to it
    assert durations == [timelapse.FRAME_MS] * 4 + [timelapse.HOLD_MS]
    big = [snapshot_jpeg(seed, (1024, 768)) for seed in range(2)]
    assert frames_of(timelapse.render(big, None)[0])[1] == (512, 384)  # capped at MAX_SIDE
    with pytest.raises(ValueError):
        timelapse.render([], result)


def test_a_finished_job_s_timelapse_ends_with_its_result(client: httpx.Client, service: Service) -> None:
    job_id = write_job(service, "succeeded", [1, 5, 10], result=True)
    answer = client.get(f"/jobs/{job_id}/timelapse")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/webp" and answer.headers["cache-control"] == IMMUTABLE
    frames, size, durations = frames_of(answer.content)
    assert frames == 4 and size == (24, 20) and durations[-1] == timelapse.HOLD_MS
    # Cheap to ask again: the same bytes and ETag, a 304 for the ETag, ranges as any image.
    etag = answer.headers["etag"]
    again = client.get(f"/jobs/{job_id}/timelapse")
    assert again.content == answer.content and again.headers["etag"] == etag
    unchanged = client.get(f"/jobs/{job_id}/timelapse", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.content == b""
    part = client.get(f"/jobs/{job_id}/timelapse", headers={"Range": "bytes=0-11"})
    assert part.status_code == 206 and part.content == answer.content[:12]


def test_a_long_job_s_timelapse_has_at_most_a_hundred_frames(client: httpx.Client, service: Service) -> None:
    job_id = write_job(service, "succeeded", [1, *range(5, 751, 5)], result=True)  # 151 snapshots
    answer = client.get(f"/jobs/{job_id}/timelapse")
    assert answer.status_code == 200, answer.text
    assert frames_of(answer.content)[0] == timelapse.MAX_FRAMES  # 99 snapshots and the result


def test_a_running_job_s_timelapse_grows_and_says_so(client: httpx.Client, service: Service) -> None:
    job_id = write_job(service, "running", [1, 5])
    first = client.get(f"/jobs/{job_id}/timelapse")
    assert first.status_code == 200 and first.headers["cache-control"] == "no-cache"
    assert frames_of(first.content)[0] == 2  # no result yet
    with redis.Redis.from_url(service.redis_url) as raw:  # a snapshot more, then the end
        raw.set(snapshot_key(job_id, 10), snapshot_jpeg(10))
        raw.hset(job_key(job_id), "snapshots", "[1, 5, 10]")
        grown = client.get(f"/jobs/{job_id}/timelapse", headers={"If-None-Match": first.headers["etag"]})
        assert grown.status_code == 200 and frames_of(grown.content)[0] == 3
        raw.set(result_key(job_id), encoded(gradient_image(24, 20, seed=77), "PNG"))
        raw.hset(job_key(job_id), "status", '"succeeded"')
    done = client.get(f"/jobs/{job_id}/timelapse", headers={"If-None-Match": grown.headers["etag"]})
    assert done.status_code == 200 and done.headers["cache-control"] == IMMUTABLE
    assert frames_of(done.content)[0] == 4


def test_no_job_is_404_and_no_snapshot_yet_409(client: httpx.Client, service: Service) -> None:
    for missing in ("0" * 32, "not-a-job"):
        answer = client.get(f"/jobs/{missing}/timelapse")
        assert answer.status_code == 404 and answer.json()["type"] == "/problems/not-found"
    queued = write_job(service, "queued", [])
    early = client.get(f"/jobs/{queued}/timelapse")
    assert early.status_code == 409 and early.headers["content-type"] == "application/problem+json"
    assert early.json()["type"] == "/problems/no-snapshot-yet" and "queued" in early.json()["detail"]
    assert client.get(early.json()["type"]).status_code == 200  # the type's page
    expired = write_job(service, "succeeded", [1, 5])
    with redis.Redis.from_url(service.redis_url) as raw:
        raw.delete(snapshot_key(expired, 1), snapshot_key(expired, 5))
    gone = client.get(f"/jobs/{expired}/timelapse")
    assert gone.status_code == 404 and "expired" in gone.json()["detail"]


def test_a_job_run_by_the_worker_has_a_frame_per_snapshot_and_its_result(client: httpx.Client, tmp_path: Path) -> None:
    content = tmp_path / "content.png"
    gradient_image(48, 40, seed=3).save(content)
    params = {"iterations": 12, "height": 32, "width": 32, "snapshot_every": 3, "seed": 1}
    job = submit(client, content, [SAMPLES / "starry_night.jpg"], params).json()
    done = poll(client, job["id"], is_final)
    assert done["status"] == "succeeded"
    iterations = [snapshot["iteration"] for snapshot in done["snapshots"]]
    assert iterations == [1, 3, 6, 9, 12]
    answer = client.get(f"/jobs/{job['id']}/timelapse")
    assert answer.status_code == 200, answer.text
    frames, size, durations = frames_of(answer.content)
    assert frames == len(iterations) + 1 and size == (48, 40)  # the snapshots' size: the content's
    assert durations[-1] == timelapse.HOLD_MS
    assert client.get(done["result_url"]).status_code == 200


def test_another_key_s_job_has_no_timelapse(start_service: StartService, tmp_path: Path) -> None:
    keys_file = tmp_path / "api-keys.jsonl"
    alice, alice_key = add_key(keys_file, "alice")
    _, bob_key = add_key(keys_file, "bob")
    stack = start_service({"NST_API_KEYS_FILE": str(keys_file)}, workers=0)
    job_id = write_job(stack, "succeeded", [1, 5], result=True, owner=alice.id)
    url = f"{stack.url}/jobs/{job_id}/timelapse"
    assert httpx.get(url, headers={"Authorization": f"Bearer {alice_key}"}).status_code == 200
    assert httpx.get(url, headers={"Authorization": f"Bearer {bob_key}"}).status_code == 404
    assert httpx.get(url).status_code == 401
