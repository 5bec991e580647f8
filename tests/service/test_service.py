"""The service through HTTP, with a real redis-server, a real Celery worker and a real uvicorn (the
shared stack, whose CORS settings allow http://front.example)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from core.output import read_metadata
from tests.conftest import SAMPLES
from tests.services import HANG, Service, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"  # 600x400
STARRY = SAMPLES / "starry_night.jpg"
SMALL = {"height": 64, "width": 64}
LONG = {"iterations": 20000, "height": 32, "width": 32}  # runs until canceled


def assert_problem(answer: httpx.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    return body


def test_a_job_runs_with_snapshots_and_a_result(client: httpx.Client, service: Service) -> None:
    answer = submit(client, COFFEE, [STARRY], {"iterations": 120, "seed": 3, **SMALL})
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert answer.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] in ("queued", "running") and job["params"]["style_weight"] == 1000.0
    seen: list[dict] = []
    done = poll(client, job["id"], is_final, seen=seen)
    assert done["status"] == "succeeded", service.logs()
    assert [s["iteration"] for s in done["snapshots"]] == [1, 50, 100]
    assert done["progress"] == {
        "iteration": 120, "total": 120, "fraction": 1.0, "scale": {"index": 1, "count": 1, "height": 64, "width": 64},
    }  # fmt: skip
    assert done["losses"]["total"] > 0 and done["weights"] == "random" and done["error"] is None
    assert done["started_at"] and done["finished_at"] and done["result_url"] == f"/jobs/{job['id']}/result"
    iterations = [j["progress"]["iteration"] for j in seen]
    assert iterations == sorted(iterations), "progress never goes backwards"
    for snap in done["snapshots"]:
        image = client.get(snap["url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(image.content)) as img:
            assert img.format == "JPEG" and img.size == (600, 400)
            assert read_metadata(img)["iteration"] == str(snap["iteration"])
    latest = client.get(f"/jobs/{job['id']}/snapshots/latest")
    assert latest.status_code == 200 and latest.headers["x-iteration"] == "100"
    result = client.get(done["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(result.content)) as img:
        assert img.format == "PNG" and img.size == (600, 400)
        assert read_metadata(img)["weights"] == "random" and read_metadata(img)["seed"] == "3"


def test_a_running_job_is_canceled(client: httpx.Client) -> None:
    # How soon (within a second) is a timing, for bench/: here, that the run stops before its end.
    job = submit(client, COFFEE, [STARRY], LONG).json()
    poll(client, job["id"], lambda j: j["status"] == "running" and j["progress"]["iteration"] >= 1)
    answer = client.post(f"/jobs/{job['id']}/cancel")
    assert answer.status_code == 202 and answer.json()["id"] == job["id"]
    done = poll(client, job["id"], is_final)
    assert done["status"] == "canceled" and done["finished_at"] is not None
    assert done["progress"]["iteration"] < LONG["iterations"]
    again = client.post(f"/jobs/{job['id']}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "canceled"  # cancel twice: same answer
    assert_problem(client.get(f"/jobs/{job['id']}/result"), 409)


def test_a_queued_job_waits_shows_its_position_and_is_never_started_once_canceled(client: httpx.Client) -> None:
    busy = submit(client, COFFEE, [STARRY], LONG).json()
    poll(client, busy["id"], lambda j: j["status"] == "running")
    second = submit(client, COFFEE, [STARRY], {"iterations": 2, **SMALL}).json()
    third = submit(client, COFFEE, [STARRY], {"iterations": 2, **SMALL}).json()
    assert second["status"] == "queued" and second["queue_position"] == 1
    assert client.get(f"/jobs/{third['id']}").json()["queue_position"] == 2

    canceled = client.post(f"/jobs/{second['id']}/cancel").json()
    assert canceled["status"] == "canceled" and canceled["queue_position"] is None
    assert client.get(f"/jobs/{third['id']}").json()["queue_position"] == 1

    client.post(f"/jobs/{busy['id']}/cancel")
    assert poll(client, third["id"], is_final)["status"] == "succeeded"
    never = client.get(f"/jobs/{second['id']}").json()
    assert never["status"] == "canceled" and never["started_at"] is None and never["snapshots"] == []


def test_unknown_ids_are_404_problems(client: httpx.Client) -> None:
    for job_id in ("0" * 32, "not-an-id", "..%2F..%2Fetc", "x" * 10_000, "caf\u00e9"):
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/result", f"/jobs/{job_id}/snapshots/1"):
            assert_problem(client.get(path), 404)
        assert_problem(client.post(f"/jobs/{job_id}/cancel"), 404)


def test_result_before_the_end_is_409_and_finished_jobs_cannot_be_canceled(client: httpx.Client) -> None:
    job = submit(client, COFFEE, [STARRY], LONG).json()
    body = assert_problem(client.get(f"/jobs/{job['id']}/result"), 409)
    assert "result" in body["detail"]
    assert_problem(client.get(f"/jobs/{job['id']}/snapshots/999"), 404)
    client.post(f"/jobs/{job['id']}/cancel")
    poll(client, job["id"], is_final)
    short = submit(client, COFFEE, [STARRY], {"iterations": 1, **SMALL}).json()
    assert poll(client, short["id"], is_final)["status"] == "succeeded"
    assert_problem(client.post(f"/jobs/{short['id']}/cancel"), 409)


@pytest.mark.parametrize(
    ("files", "params", "status", "field"),
    [
        ({"content": b"plain text, not an image"}, None, 415, "content"),
        ({"style": b"<html><body>hi</body></html>"}, None, 415, "style"),
        ({"content": b""}, None, 415, "content"),
        ({}, {"unknown_knob": 1}, 422, "params.unknown_knob"),
        ({}, {"iterations": 0}, 422, "params.iterations"),
        ({}, {"iterations": 1_000_000}, 422, "params.iterations"),
        ({}, {"style_layers": ["conv9_9"], "style_layer_weights": [1]}, 422, "params.style_layers"),
        ({}, {"style_blend_weights": [1, 2]}, 422, "params.style_blend_weights"),
        ({}, "{not json", 422, "params"),
        ({}, "[1, 2]", 422, "params"),
    ],
)
def test_bad_submissions_are_refused_and_queue_nothing(
    client: httpx.Client, files: dict, params: object, status: int, field: str
) -> None:
    import json

    before = client.get("/jobs", params={"limit": 100}).json()["items"]
    parts = {"content": COFFEE.read_bytes(), "style": STARRY.read_bytes()} | files
    upload = [(name, (f"{name}.bin", data)) for name, data in parts.items()]
    data = None if params is None else {"params": params if isinstance(params, str) else json.dumps(params)}
    body = assert_problem(client.post("/jobs", files=upload, data=data), status)
    assert field in body["detail"]
    after = client.get("/jobs", params={"limit": 100}).json()["items"]
    assert [j["id"] for j in after] == [j["id"] for j in before]


def test_a_submission_without_style_is_422(client: httpx.Client) -> None:
    body = assert_problem(client.post("/jobs", files=[("content", ("c.png", COFFEE.read_bytes()))]), 422)
    assert "style" in body["detail"]


def test_listing_is_newest_first_and_pages_with_a_cursor(client: httpx.Client) -> None:
    ids = [
        submit(client, COFFEE, [STARRY], {"iterations": 1, "height": 16, "width": 16}).json()["id"] for _ in range(3)
    ]
    first = client.get("/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["items"]] == ids[::-1][:2] and first["next_cursor"]
    second = client.get("/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert second["items"][0]["id"] == ids[0]
    assert_problem(client.get("/jobs", params={"cursor": "abc"}), 422)
    assert_problem(client.get("/jobs", params={"limit": 0}), 422)
    for job_id in ids:
        poll(client, job_id, is_final)


def test_health_readiness_cors_and_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    readiness = client.get("/readyz").json()
    assert (readiness["redis"], readiness["workers"]) == ("ok", 1)
    # The shared stack's worker measured its CPU at start (tests/conftest.py's SHARED_ENV).
    (worker,) = readiness["live_workers"]
    assert worker["device"] == "cpu" and worker["precision"] == "fp32" and worker["compile"] is False
    assert worker["memory_model"] in ("measured", "written") and worker["ms_per_iteration"] > 0
    assert worker["speed_size"] == {"height": 32, "width": 32}
    calibration = worker["calibration"]
    # The fit at such small sizes may be refused (the written constants then stay); it ran either way.
    assert calibration["memory"]["calibrated"] and calibration["memory"]["outcome"] == worker["memory_model"]
    assert calibration["speed"]["outcome"] == "measured"
    assert calibration["precision"]["outcome"] == calibration["compile"]["outcome"] == "skipped"
    preflight = client.options(
        "/jobs", headers={"Origin": "http://front.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.headers.get("access-control-allow-origin") == "http://front.example"
    assert (
        client.get("/healthz", headers={"Origin": "http://evil.example"}).headers.get("access-control-allow-origin")
        is None
    )
    schema = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/result"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_nst_submit_waits_and_saves_the_result(service: Service, tmp_path: Path) -> None:
    out = tmp_path / "result.png"
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "submit", str(COFFEE), str(STARRY), "--server", service.url,
         "--params", '{"iterations": 60, "height": 32, "width": 32}', "-o", str(out)],
        capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 32  # the job id, for scripts
    assert "60/60" in done.stderr and f"saved {out}" in done.stderr
    with Image.open(out) as img:
        assert img.size == (600, 400)


def test_nst_submit_reports_a_refusal_in_one_line(service: Service, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "submit", str(COFFEE), str(STARRY), "--server", service.url,
         "--params", '{"iterations": -1}'],
        capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "422" in done.stderr


def test_the_api_never_imports_torch() -> None:
    code = "import sys, api.app, api.commands; api.app.create_app(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=HANG).returncode == 0


@pytest.mark.service  # a stack of its own, under `nst up`
def test_nst_up_runs_everything_and_stops_it_all_on_sigterm(tmp_path: Path) -> None:
    """Its Redis refuses writes past NST_REDIS_MAXMEMORY instead of evicting job state, and the
    pictures go to <data dir>/blobs unless NST_BLOB_STORE says otherwise."""
    import os
    import re
    import signal

    import redis

    from worker.local import free_port, nst_command, wait_for_http

    port = free_port()
    env = os.environ | {"NST_VGG_WEIGHTS": "random", "NST_DEVICE": "cpu", "NST_WORKER_HEARTBEAT_SECONDS": "1"}
    env |= {"NST_REDIS_MAXMEMORY": "300mb"}
    env.pop("NST_REDIS_URL", None)
    env.pop("NST_BLOB_STORE", None)
    up = subprocess.Popen(
        nst_command("up", "--port", str(port), "--data-dir", str(tmp_path / "data")),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    blobs = (tmp_path / "data" / "blobs").resolve()
    try:
        assert up.stdout is not None
        banner = ""
        for line in up.stdout:  # until the banner's last line (or nst up's end)
            banner += line
            if "Ctrl-C stops everything" in line:
                break
        assert f"Pictures: {blobs}" in banner, banner
        redis_url = re.search(r"redis://127\.0\.0\.1:\d+/0", banner)
        assert redis_url is not None, banner
        client = redis.Redis.from_url(redis_url[0])
        assert client.config_get("maxmemory") == {"maxmemory": str(300 * 1024 * 1024)}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        wait_for_http(f"http://127.0.0.1:{port}/readyz", up, timeout=HANG)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            job = submit(http, COFFEE, [STARRY], {"iterations": 2, "height": 16, "width": 16}).json()
            assert poll(http, job["id"], is_final)["status"] == "succeeded"
            # The result is a file of the blob directory, and its bytes are what the API serves.
            stored = blobs / "jobs" / job["id"] / "result.png"
            assert stored.is_file(), sorted(str(p.relative_to(blobs)) for p in blobs.rglob("*"))
            assert http.get(f"/jobs/{job['id']}/result").content == stored.read_bytes()
        up.send_signal(signal.SIGTERM)
        output, _ = up.communicate(timeout=HANG)
        output = banner + output
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert up.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output and "redis://127.0.0.1:" in output and "curl" in output
    assert (tmp_path / "data" / "redis").is_dir()  # the append-only file lives there
    leftovers = subprocess.run(["pgrep", "-s", str(up.pid)], capture_output=True, text=True).stdout.split()
    assert leftovers == [], "nst up left processes behind"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
