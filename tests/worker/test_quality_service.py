"""Each quality option through the real service (redis-server, a Celery worker, uvicorn; the shared
stack): a 32x32 job succeeds with its snapshots and result, and a bad value is a 422 naming it."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import SAMPLES
from tests.services import Service, is_final, poll, submit

COFFEE = SAMPLES / "coffee.png"  # 600x400
STARRY = SAMPLES / "starry_night.jpg"
JOB = {"iterations": 6, "snapshot_every": 3, "height": 32, "width": 32, "seed": 1}
OPTIONS: list[dict[str, Any]] = [
    {"optimizer": "lbfgs"},
    {
        "optimizer": "lbfgs",
        "lbfgs_history": 3,
        "scales": [{"size": 16, "iterations": 3}, {"size": 32, "iterations": 3}],
    },
    {"style_loss": "w2"},
    {"color_match": "pca"},
    {"color_match": "chol"},
    {"color_match": "sym"},
    {"average": 0.99},
    {"average": 0.9, "scales": [{"size": 16, "iterations": 3}, {"size": 32, "iterations": 3}]},
]


@pytest.fixture(scope="module")
def submitted(service: Service) -> dict[int, str]:
    """Every option's job, queued at once so that the worker runs them back to back."""
    with httpx.Client(base_url=service.url, timeout=30) as http:
        ids = {}
        for index, option in enumerate(OPTIONS):
            answer = submit(http, COFFEE, [STARRY], {**JOB, **option})
            assert answer.status_code == 202, answer.text
            ids[index] = answer.json()["id"]
        return ids


@pytest.mark.parametrize("index", range(len(OPTIONS)), ids=[",".join(o) for o in OPTIONS])
def test_each_option_runs_through_the_service_with_snapshots(
    service: Service, client: httpx.Client, submitted: dict[int, str], index: int
) -> None:
    option = OPTIONS[index]
    done = poll(client, submitted[index], is_final)
    assert done["status"] == "succeeded", service.logs()
    assert all(done["params"][name] == value for name, value in option.items() if name != "scales")
    assert [s["iteration"] for s in done["snapshots"]] == [1, 3, 6]
    for snapshot in done["snapshots"]:
        answer = client.get(snapshot["url"])
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert done["progress"]["iteration"] == 6 and done["losses"]["total"] >= 0
    result = Image.open(io.BytesIO(client.get(done["result_url"]).content))
    assert result.size == (600, 400)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"optimizer": "newton"}, "params.optimizer"),
        ({"lbfgs_history": 0}, "params.lbfgs_history"),
        ({"color_match": "lab"}, "params.color_match"),
        ({"style_loss": "mmd"}, "params.style_loss"),
        ({"average": 1.5}, "params.average"),
    ],
)
def test_a_bad_option_is_a_422_naming_it(client: httpx.Client, params: dict[str, Any], field: str) -> None:
    answer = submit(client, COFFEE, [STARRY], {**JOB, **params})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert field in answer.text
