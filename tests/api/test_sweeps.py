"""Sweeps (POST /sweeps): a job per cell of a parameter grid, made all or none, followed, drawn on a
contact sheet, canceled and deleted together; owned by one API key; `nst submit --grid`.

Two stacks: the shared one (one worker), where sweeps run to their end, and one of this module's
own with API keys and no worker, where jobs stay queued (what a sweep made can be looked at before
anything runs it) and one key's bytes limit refuses a sweep half-way."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

from api.contact_sheet import GAP, LINE, PLACEHOLDER, TILE, grid_shape, sheet_size
from api.keys_file import add_key
from jobs.blobs import BlobStore, style_path
from jobs.keys import JOBS_KEY, QUEUE_KEY, sweep_key
from jobs.store import JobStore
from jobs.sweeps import SweepAxis
from jobs.tenancy import Limits, TenantLimits
from tests.conftest import SAMPLES, gradient_image
from tests.services import HANG, Service, StartService

TINY = {"iterations": 3, "height": 32, "width": 32, "snapshot_every": 1}
LONG = {"iterations": 20000, "height": 32, "width": 32}  # runs until canceled
GRID = {"style_weight": [100, 1000, 10000], "style_scale": [0.5, 1.0]}
STORED_LIMIT = 3_000_000  # the keyed stack's bytes per key: three jobs of the samples below, not four


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small pictures: a content and two styles that differ."""
    folder = tmp_path_factory.mktemp("sweep-images")
    made = {}
    for name, image in (
        ("content", gradient_image(48, 40, seed=1)),
        ("style_a", gradient_image(40, 40, seed=2)),
        ("style_b", gradient_image(36, 44, seed=3).rotate(90, expand=True)),
    ):
        made[name] = folder / f"{name}.png"
        image.save(made[name])
    return made


def post_sweep(
    client: httpx.Client,
    content: Path,
    styles: list[Path],
    params: dict[str, Any] | None = None,
    grid: Any = None,
    each_style: str | None = None,
) -> httpx.Response:
    files = [("content", (content.name, content.read_bytes()))]
    files += [("style", (path.name, path.read_bytes())) for path in styles]
    data = {}
    if params is not None:
        data["params"] = json.dumps(params)
    if grid is not None:
        data["grid"] = grid if isinstance(grid, str) else json.dumps(grid)
    if each_style is not None:
        data["each_style"] = each_style
    return client.post("/sweeps", files=files, data=data)


def follow(client: httpx.Client, sweep_id: str, until: tuple[str, ...] = ("finished", "canceled")) -> dict[str, Any]:
    deadline = time.monotonic() + HANG
    while time.monotonic() < deadline:
        answer = client.get(f"/sweeps/{sweep_id}")
        assert answer.status_code == 200, answer.text
        sweep: dict[str, Any] = answer.json()
        if sweep["status"] in until:
            return sweep
        time.sleep(0.2)
    raise AssertionError(f"sweep {sweep_id} did not end: {sweep}")


def sheet_of(answer: httpx.Response) -> Image.Image:
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == "JPEG"
    return image.convert("RGB")


def tile_centre(sheet: Image.Image, axes: list[SweepAxis], index: int) -> np.ndarray:
    """Pixels of a tile's picture area, below its centre (clear of a placeholder's status word)."""
    _, columns = grid_shape(axes)
    row, column = divmod(index, columns)
    cell_height = TILE + LINE * (len(axes) + 1) + 4
    left, top = GAP + column * (TILE + GAP), GAP + row * (cell_height + GAP)
    box = (left + 40, top + TILE // 2 + 20, left + TILE - 40, top + TILE // 2 + 40)
    return np.asarray(sheet.crop(box), dtype=np.float64)


def problem(answer: httpx.Response, status: int = 422) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    return body


# -- the pure parts ------------------------------------------------------------------------------


def test_the_sheet_has_a_row_per_first_axis_value_and_a_column_per_second() -> None:
    two = [SweepAxis(name="style_weight", values=[1, 2, 3]), SweepAxis(name="style_scale", values=[0.5, 1])]
    assert grid_shape(two) == (3, 2)
    assert sheet_size(two) == (GAP + 2 * (TILE + GAP), GAP + 3 * (TILE + 3 * LINE + 4 + GAP))
    assert grid_shape([SweepAxis(name="seed", values=list(range(8)))]) == (2, 6)  # one axis: rows of six
    assert grid_shape([SweepAxis(name="seed", values=[1, 2])]) == (1, 2)


# -- the shared stack: sweeps that run --------------------------------------------------------------


def test_a_3x2_grid_makes_six_jobs_that_succeed_and_a_sheet_of_their_results(
    service: Service, client: httpx.Client, images: dict[str, Path]
) -> None:
    answer = post_sweep(client, images["content"], [images["style_a"]], {**TINY, "seed": 3}, GRID)
    assert answer.status_code == 202, answer.text
    sweep = answer.json()
    assert (
        answer.headers["location"] == f"/sweeps/{sweep['id']}" and sweep["sheet_url"] == f"/sweeps/{sweep['id']}/sheet"
    )
    assert sweep["axes"] == [
        {"name": "style_weight", "values": [100, 1000, 10000], "labels": None},
        {"name": "style_scale", "values": [0.5, 1.0], "labels": None},
    ]
    expected = [{"style_weight": w, "style_scale": s} for w in GRID["style_weight"] for s in GRID["style_scale"]]
    assert [job["values"] for job in sweep["jobs"]] == expected  # row-major: the first axis outer
    assert len({job["id"] for job in sweep["jobs"]}) == 6
    store = JobStore.from_url(service.redis_url, 3600)
    try:
        for job, values in zip(sweep["jobs"], expected, strict=True):
            assert job["url"] == f"/jobs/{job['id']}"
            params = client.get(job["url"]).json()["params"]
            assert params["style_weight"] == values["style_weight"] and params["style_scale"] == values["style_scale"]
            assert params["iterations"] == 3 and params["seed"] == 3 and params["height"] == 32  # the base
            record = store.get(job["id"])
            assert record is not None and record.sweep == sweep["id"] and record.style_count == 1
    finally:
        store.close()

    done = follow(client, sweep["id"])
    assert done["status"] == "finished", (done, service.logs())
    assert [job["status"] for job in done["jobs"]] == ["succeeded"] * 6
    assert done["counts"]["succeeded"] == 6 and sum(done["counts"].values()) == 6
    for job in done["jobs"]:
        assert job["result_url"] == f"/jobs/{job['id']}/result"
        assert client.get(job["result_url"]).content.startswith(b"\x89PNG")

    answer = client.get(done["sheet_url"])
    sheet = sheet_of(answer)
    axes = [SweepAxis.model_validate(axis) for axis in done["axes"]]
    assert sheet.size == sheet_size(axes) == (GAP + 2 * (TILE + GAP), GAP + 3 * (TILE + 3 * LINE + 4 + GAP))
    for index in range(6):  # each tile is a picture, not the uniform placeholder
        assert tile_centre(sheet, axes, index).std() > 3, index
    assert answer.headers["cache-control"] == "no-cache"
    again = client.get(done["sheet_url"], headers={"If-None-Match": answer.headers["etag"]})
    assert again.status_code == 304


def test_a_cancel_stops_every_job_of_the_sweep(service: Service, client: httpx.Client, images: dict[str, Path]) -> None:
    answer = post_sweep(client, images["content"], [images["style_a"]], LONG, {"seed": [1, 2, 3]})
    assert answer.status_code == 202, answer.text
    sweep = follow(client, answer.json()["id"], until=("running",))
    canceled = client.post(f"/sweeps/{sweep['id']}/cancel")
    assert canceled.status_code == 202, canceled.text
    assert canceled.json()["id"] == sweep["id"]
    done = follow(client, sweep["id"])
    assert done["status"] == "canceled", (done, service.logs())
    assert [job["status"] for job in done["jobs"]] == ["canceled"] * 3 and done["counts"]["canceled"] == 3
    for job in done["jobs"]:
        assert client.get(job["url"]).json()["status"] == "canceled"


def test_deleting_a_sweep_deletes_every_job_and_its_pictures(
    service: Service, client: httpx.Client, images: dict[str, Path]
) -> None:
    answer = post_sweep(client, images["content"], [images["style_a"]], TINY, {"seed": [1, 2]})
    assert answer.status_code == 202, answer.text
    done = follow(client, answer.json()["id"])
    assert done["status"] == "finished", (done, service.logs())
    folders = [service.root / "blobs" / "jobs" / job["id"] for job in done["jobs"]]
    assert all(folder.exists() for folder in folders)

    deleted = client.delete(f"/sweeps/{done['id']}")
    assert deleted.status_code == 204 and deleted.content == b""
    problem(client.get(f"/sweeps/{done['id']}"), 404)
    problem(client.get(f"/sweeps/{done['id']}/sheet"), 404)
    problem(client.delete(f"/sweeps/{done['id']}"), 404)
    for job in done["jobs"]:
        assert client.get(job["url"]).status_code == 404
    assert not any(folder.exists() and any(folder.rglob("*")) for folder in folders)
    with redis.Redis.from_url(service.redis_url) as db:
        assert not db.exists(sweep_key(done["id"]))
        assert not [key for job in done["jobs"] for key in db.scan_iter(match=f"*{job['id']}*")]


def test_nst_submit_with_a_grid_follows_the_sweep_and_saves_its_sheet(
    service: Service, images: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "sheet.jpg"
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "submit", str(images["content"]), str(images["style_a"]),
         "--server", service.url, "--params", json.dumps(TINY), "--grid", '{"style_weight": [100, 1000]}',
         "-o", str(out)],
        capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweep_id = done.stdout.strip()
    assert len(sweep_id) == 32 and f"saved {out}" in done.stderr and "2/2 jobs ended" in done.stderr
    sweep = httpx.get(f"{service.url}/sweeps/{sweep_id}").json()
    assert sweep["status"] == "finished" and [job["values"] for job in sweep["jobs"]] == [
        {"style_weight": 100},
        {"style_weight": 1000},
    ]
    with Image.open(out) as sheet:
        assert sheet.format == "JPEG" and sheet.size == sheet_size([SweepAxis(name="style_weight", values=[1, 2])])

    refused = subprocess.run(
        [sys.executable, "-m", "core.cli", "submit", str(images["content"]), str(images["style_a"]),
         "--server", service.url, "--grid", '{"nonsense": [1]}'],
        capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert refused.returncode == 1 and "422" in refused.stderr and refused.stdout == ""


# -- a stack with API keys and no worker ----------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The keys file, and name -> (the key's id, the key)."""
    path = tmp_path_factory.mktemp("sweep-keys") / "keys.jsonl"
    made = {name: add_key(path, name) for name in ("alice", "bob", "carol")}
    return path, {name: (record.id, key) for name, (record, key) in made.items()}


@pytest.fixture(scope="module")
def keyed(start_service: StartService, keys: tuple[Path, dict[str, tuple[str, str]]]) -> Service:
    env = {"NST_API_KEYS_FILE": str(keys[0]), "NST_MAX_STORED_BYTES_PER_KEY": str(STORED_LIMIT)}
    return start_service(env, workers=0)


@pytest.fixture(scope="module")
def clients(keyed: Service, keys: tuple[Path, dict[str, tuple[str, str]]]) -> Iterator[dict[str, httpx.Client]]:
    made = {
        name: httpx.Client(base_url=keyed.url, timeout=60, headers={"Authorization": f"Bearer {key}"})
        for name, (_, key) in keys[1].items()
    }
    yield made
    for http in made.values():
        http.close()


@pytest.fixture
def db(keyed: Service) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(keyed.redis_url)
    yield client
    client.close()


def test_a_sweep_is_its_owner_s_alone(
    keyed: Service, clients: dict[str, httpx.Client], images: dict[str, Path]
) -> None:
    alice, bob = clients["alice"], clients["bob"]
    answer = post_sweep(alice, images["content"], [images["style_a"]], TINY, {"seed": [1, 2]})
    assert answer.status_code == 202, answer.text
    sweep_id = answer.json()["id"]
    for method, path in (
        ("GET", f"/sweeps/{sweep_id}"),
        ("GET", f"/sweeps/{sweep_id}/sheet"),
        ("POST", f"/sweeps/{sweep_id}/cancel"),
        ("DELETE", f"/sweeps/{sweep_id}"),
    ):
        assert problem(bob.request(method, path), 404)["type"] == "/problems/not-found", (method, path)
        assert httpx.request(method, keyed.url + path).status_code == 401
    view = alice.get(f"/sweeps/{sweep_id}").json()
    assert view["status"] == "queued" and [job["status"] for job in view["jobs"]] == ["queued", "queued"]
    assert {job["id"] for job in alice.get("/jobs").json()["items"]} >= {job["id"] for job in view["jobs"]}
    assert not bob.get("/jobs").json()["items"]
    with httpx.Client(base_url=keyed.url) as anonymous:
        assert problem(post_sweep(anonymous, images["content"], [images["style_a"]], grid={"seed": [1]}), 401)


def test_a_queued_sweep_s_sheet_is_grey_placeholders(
    keyed: Service, clients: dict[str, httpx.Client], images: dict[str, Path]
) -> None:
    alice = clients["alice"]
    answer = post_sweep(alice, images["content"], [images["style_a"]], TINY, GRID)
    assert answer.status_code == 202, answer.text
    sweep = answer.json()
    axes = [SweepAxis.model_validate(axis) for axis in sweep["axes"]]
    first = alice.get(sweep["sheet_url"])
    sheet = sheet_of(first)
    assert sheet.size == sheet_size(axes)
    for index in range(6):
        area = tile_centre(sheet, axes, index)
        assert area.std() < 3 and abs(area.mean() - PLACEHOLDER[0]) < 6, index
    # A canceled cell changes the sheet: a new ETag, not a 304.
    alice.post(f"/jobs/{sweep['jobs'][0]['id']}/cancel")
    second = alice.get(sweep["sheet_url"], headers={"If-None-Match": first.headers["etag"]})
    assert second.status_code == 200 and second.headers["etag"] != first.headers["etag"]
    view = alice.get(f"/sweeps/{sweep['id']}").json()
    assert view["status"] == "running" and view["counts"]["canceled"] == 1 and view["counts"]["queued"] == 5

    canceled = alice.post(f"/sweeps/{sweep['id']}/cancel")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    assert [job["status"] for job in canceled.json()["jobs"]] == ["canceled"] * 6


def test_each_style_gives_each_cell_one_style_image(
    keyed: Service, clients: dict[str, httpx.Client], images: dict[str, Path]
) -> None:
    alice = clients["alice"]
    styles = [images["style_a"], images["style_b"]]
    # The base's blend weights (one per image) mean nothing to a one-style cell: left out, not refused.
    base = {**TINY, "style_blend_weights": [1.0, 2.0]}
    answer = post_sweep(alice, images["content"], styles, base, {"content_weight": [1, 5]}, each_style="true")
    assert answer.status_code == 202, answer.text
    sweep = answer.json()
    assert sweep["axes"] == [
        {"name": "content_weight", "values": [1, 5], "labels": None},
        {"name": "style", "values": [0, 1], "labels": ["style_a.png", "style_b.png"]},
    ]
    assert [job["values"] for job in sweep["jobs"]] == [
        {"content_weight": w, "style": s} for w in (1, 5) for s in (0, 1)
    ]  # fmt: skip
    blobs = BlobStore(str(keyed.root / "blobs"))
    store = JobStore.from_url(keyed.redis_url, 3600)
    try:
        for job in sweep["jobs"]:
            record = store.get(job["id"])
            assert record is not None and record.style_count == 1
            assert record.params["content_weight"] == job["values"]["content_weight"]
            assert blobs.get(style_path(job["id"], 0)) == styles[job["values"]["style"]].read_bytes()
    finally:
        store.close()

    alone = post_sweep(alice, images["content"], styles, TINY, each_style="1")
    assert alone.status_code == 202, alone.text
    assert [job["values"] for job in alone.json()["jobs"]] == [{"style": 0}, {"style": 1}]


@pytest.mark.parametrize(
    ("grid", "each_style", "field", "words"),
    [
        ({"style_weight": [1, 2], "style_scale": [1, 2], "seed": [1, 2]}, None, "grid", "at most 2 axes"),
        ({"style_weight": [1, 2], "style_scale": [1, 2]}, "true", "grid", "at most 2 axes"),
        ({"nonsense": [1, 2]}, None, "grid.nonsense", "not a parameter"),
        ({"style_weight": [100, -1]}, None, "grid.style_weight[1]", "greater than or equal to 0"),
        ({"init": ["content", "sideways"]}, None, "grid.init[1]", "Input should be"),
        ({"height": [32, 100000]}, None, "grid.height[1]", "4096"),
        ({"style_weight": [1, 2, 3, 4, 5], "seed": [1, 2, 3, 4, 5]}, None, "grid", "25 cells"),
        ({"style_weight": []}, None, "grid.style_weight", "non-empty list"),
        ({"style_weight": 5}, None, "grid.style_weight", "non-empty list"),
        ("[1, 2]", None, "grid", "JSON object"),
        ("{not json", None, "grid", "not valid JSON"),
        (None, None, "grid", "at least one parameter"),
        ({}, "false", "grid", "at least one parameter"),
        ({"seed": [1]}, "maybe", "each_style", "true"),
    ],
)
def test_a_bad_grid_is_a_422_naming_it_and_makes_no_job(
    keyed: Service,
    clients: dict[str, httpx.Client],
    images: dict[str, Path],
    db: redis.Redis,
    grid: Any,
    each_style: str | None,
    field: str,
    words: str,
) -> None:
    jobs_before = db.zcard(JOBS_KEY)
    answer = post_sweep(clients["alice"], images["content"], [images["style_a"]], TINY, grid, each_style)
    body = problem(answer)
    assert body["type"] == "/problems/invalid-request"
    assert [error["field"] for error in body["errors"]] == [field], body
    assert words in body["errors"][0]["message"], body
    assert db.zcard(JOBS_KEY) == jobs_before


def test_a_base_parameter_wrong_in_every_cell_is_named_once(
    clients: dict[str, httpx.Client], images: dict[str, Path], db: redis.Redis
) -> None:
    jobs_before = db.zcard(JOBS_KEY)
    answer = post_sweep(clients["alice"], images["content"], [images["style_a"]], {"iterations": 0}, {"seed": [1, 2]})
    body = problem(answer)
    assert [error["field"] for error in body["errors"]] == ["params.iterations"], body
    extra = post_sweep(clients["alice"], images["content"], [images["style_a"]], {"bogus": 1}, {"seed": [1]})
    assert [error["field"] for error in problem(extra)["errors"]] == ["params.bogus"]
    assert db.zcard(JOBS_KEY) == jobs_before


def test_a_sweep_refused_half_way_leaves_nothing_behind(
    keyed: Service, keys: tuple[Path, dict[str, tuple[str, str]]], clients: dict[str, httpx.Client], db: redis.Redis
) -> None:
    """Carol's bytes limit holds three jobs of these samples: the fourth cell is refused after
    three jobs were made, and those go again, with what they took of her limits."""
    carol, carol_id = clients["carol"], keys[1]["carol"][0]
    coffee, starry = SAMPLES / "coffee.png", SAMPLES / "starry_night.jpg"
    per_job = coffee.stat().st_size + starry.stat().st_size
    assert 3 * per_job <= STORED_LIMIT < 4 * per_job
    jobs_before, queued_before = db.zcard(JOBS_KEY), db.zcard(QUEUE_KEY)
    folders_before = set((keyed.root / "blobs" / "jobs").glob("*"))

    answer = post_sweep(carol, coffee, [starry], TINY, {"seed": [1, 2, 3, 4, 5, 6]})
    body = problem(answer, 429)
    assert body["type"] == "/problems/too-much-stored" and "retry-after" in answer.headers
    assert db.zcard(JOBS_KEY) == jobs_before and db.zcard(QUEUE_KEY) == queued_before
    assert carol.get("/jobs").json()["items"] == []
    limits = TenantLimits(db, 3600, Limits(None, 1000, 10**12))
    assert limits.held_bytes(carol_id) == 0 and limits.active_jobs(carol_id) == 0
    left = {
        folder for folder in set((keyed.root / "blobs" / "jobs").glob("*")) - folders_before if any(folder.rglob("*"))
    }
    assert left == set()

    # What the refused sweep took was given back: three jobs fit again.
    fits = post_sweep(carol, coffee, [starry], TINY, {"seed": [1, 2, 3]})
    assert fits.status_code == 202, fits.text
    assert len(fits.json()["jobs"]) == 3
