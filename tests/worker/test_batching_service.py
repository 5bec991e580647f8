"""Continuous batching with real processes: queued compatible jobs join the running optimisation
on one worker, and each keeps what it has alone (progress, snapshots, cancel, resume, memory)."""

from __future__ import annotations

import io
import signal
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from core import StyleParams, stylize
from core.memory import estimate_bytes, written_model
from jobs.store import JobStore
from tests.conftest import gradient_image
from tests.services import HANG, Service, StartService, is_final, poll, submit

SIZE = {"height": 32, "width": 32}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A content image at the working size (results compare pixel for pixel) and two styles."""
    root = tmp_path_factory.mktemp("batch-images")
    paths = {}
    for name, image in (
        ("content", gradient_image(32, 32, seed=1)),
        ("style", gradient_image(40, 40, seed=2).rotate(45)),
        ("other", gradient_image(40, 40, seed=5)),
    ):
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    return paths


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    # A short lease, so that a killed worker's jobs are queued again within seconds.
    return start_service({"NST_MAX_BATCH": "4", "NST_LEASE_SECONDS": "3", "NST_CHECKPOINT_EVERY": "20"})


@pytest.fixture
def store(service: Service) -> JobStore:
    return JobStore.from_url(service.redis_url, 3600)


def when(job: dict[str, Any], name: str) -> datetime:
    return datetime.fromisoformat(job[name].replace("Z", "+00:00"))


def ran_together(jobs: list[dict[str, Any]]) -> bool:
    """One worker ran them at once: each started before every other ended."""
    return all(when(a, "started_at") < when(b, "finished_at") for a in jobs for b in jobs)


def queued_together(
    client: httpx.Client, images: dict[str, Path], jobs: list[tuple[list[Path], dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Submit `jobs` while a job of another size keeps the worker busy, then cancel that one:
    however slow the machine, they are all queued when the first of them starts."""
    blocker = submit(client, images["content"], [images["style"]], {"iterations": 20000, "height": 48, "width": 48})
    poll(client, blocker.json()["id"], lambda j: j["status"] == "running")
    submitted = [submit(client, images["content"], styles, params).json() for styles, params in jobs]
    assert client.post(f"/jobs/{blocker.json()['id']}/cancel").status_code == 202
    return submitted


def png(client: httpx.Client, url: str) -> np.ndarray:
    answer = client.get(url)
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"), dtype=int)


def test_compatible_jobs_share_one_batch_and_each_gets_its_solo_picture(
    service: Service, client: httpx.Client, images: dict[str, Path]
) -> None:
    # Different weights, seeds, learning rates, styles and lengths: one batch of four.
    params = [
        {"iterations": 120, "seed": 1, "snapshot_every": 40, **SIZE},
        {"iterations": 60, "seed": 2, "style_weight": 1e4, "snapshot_every": 25, **SIZE},
        {"iterations": 90, "seed": 3, "learning_rate": 2.0, "init": "content", **SIZE},
        {"iterations": 30, "seed": 4, "content_weight": 3.0, "tv_weight": 1e-3, **SIZE},
    ]
    styles = [[images["style"]], [images["other"]], [images["style"], images["other"]], [images["style"]]]
    jobs = queued_together(client, images, list(zip(styles, params, strict=True)))
    done = [poll(client, job["id"], is_final) for job in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 4, service.logs()
    assert ran_together(done), [(j["started_at"], j["finished_at"]) for j in done]
    assert "in a batch of 4" in service.logs(tail=0)
    # Each kept its own snapshots and progress.
    assert [s["iteration"] for s in done[0]["snapshots"]] == [1, 40, 80, 120]
    assert [s["iteration"] for s in done[1]["snapshots"]] == [1, 25, 50]
    assert [job["progress"]["iteration"] for job in done] == [120, 60, 90, 30]
    # The same picture as each job alone, in this process (CPU, fp32, the same random weights).
    content = Image.open(images["content"])
    for job, p, s in zip(done, params, styles, strict=True):
        alone = stylize(content, [Image.open(path) for path in s], StyleParams(**p))
        assert alone.losses is not None
        assert job["losses"]["total"] == pytest.approx(alone.losses.total, rel=1e-4)
        difference = np.abs(png(client, job["result_url"]) - np.asarray(alone.image, dtype=int))
        assert difference.max() <= 1


def test_a_canceled_job_leaves_the_batch_and_the_others_finish(
    service: Service, client: httpx.Client, images: dict[str, Path]
) -> None:
    long = {"iterations": 20000, **SIZE}  # runs until canceled
    staying = submit(client, images["content"], [images["style"]], {"iterations": 400, **SIZE}).json()
    leaving = submit(client, images["content"], [images["style"]], long).json()
    poll(client, leaving["id"], lambda j: j["status"] == "running" and j["progress"]["iteration"] > 5)
    assert client.post(f"/jobs/{leaving['id']}/cancel").status_code == 202
    canceled = poll(client, leaving["id"], is_final)
    assert canceled["status"] == "canceled"
    done = poll(client, staying["id"], is_final)
    assert done["status"] == "succeeded" and done["progress"]["iteration"] == 400
    assert ran_together([done, canceled])


def test_a_job_that_cannot_join_holds_back_later_ones(
    service: Service, client: httpx.Client, images: dict[str, Path]
) -> None:
    first = submit(client, images["content"], [images["style"]], {"iterations": 300, **SIZE}).json()
    poll(client, first["id"], lambda j: j["status"] == "running")
    other_size = submit(client, images["content"], [images["style"]], {"iterations": 5, "height": 48, "width": 48})
    later = submit(client, images["content"], [images["style"]], {"iterations": 5, **SIZE}).json()
    done = [poll(client, job["id"], is_final) for job in (first, other_size.json(), later)]
    assert [job["status"] for job in done] == ["succeeded"] * 3, service.logs()
    # The 48x48 job could not join; the later 32x32 one could have, but not past it in the queue.
    assert when(done[1], "started_at") >= when(done[0], "finished_at")
    assert when(done[2], "started_at") >= when(done[1], "started_at")


def test_a_killed_worker_s_batch_resumes_from_checkpoints(
    service: Service, client: httpx.Client, store: JobStore, images: dict[str, Path]
) -> None:
    pair = [([images["style"]], {"iterations": 150, "seed": seed, **SIZE}) for seed in (1, 2)]
    jobs = queued_together(client, images, pair)
    for job in jobs:
        poll(client, job["id"], lambda j: j["progress"]["iteration"] >= 45)
    worker = service.workers.pop()
    worker.send_signal(signal.SIGKILL)
    worker.wait(HANG)
    service.start_worker()
    done = [poll(client, job["id"], is_final) for job in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 2, service.logs()
    for job in done:
        assert store.completions(job["id"]) == 1
        assert store.get(job["id"]).attempts == 2  # type: ignore[union-attr]
        assert [s["iteration"] for s in job["snapshots"]] == [1, 50, 100, 150]
    assert service.logs(tail=0).count("resuming from the checkpoint at iteration") >= 2


def test_a_batch_counts_against_the_memory_budget(start_service: StartService, images: dict[str, Path]) -> None:
    # A budget that holds one 32x32 job and not a batch of two.
    params = StyleParams(iterations=200, **SIZE)
    model = written_model("cpu")
    one = estimate_bytes((32, 32), params, original=(32, 32), model=model)
    budget = one + (one - model.constants(False).fixed) // 2
    stack = start_service({"NST_MAX_BATCH": "4", "NST_MEMORY_BUDGET_BYTES": str(budget)})
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        jobs = [
            submit(client, images["content"], [images["style"]], {"iterations": n, **SIZE}).json() for n in (200, 5)
        ]
        done = [poll(client, job["id"], is_final) for job in jobs]
        assert [job["status"] for job in done] == ["succeeded"] * 2, stack.logs()
        assert when(done[1], "started_at") >= when(done[0], "finished_at")
