"""Reading what a worker measured at start from its heartbeat report (jobs/worker_reports.py), and
the queued job's ETA made of it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from core.params import StyleParams
from core.scales import plan_stages
from jobs.record import JobRecord, new_job_id
from jobs.view import JobPublic, job_view, undeclared_fields
from jobs.worker_reports import WorkerSpeed, pixel_iterations, queued_eta, speed_of


def test_a_speed_needs_a_positive_finite_time_and_two_positive_sides() -> None:
    assert speed_of({"ms_per_iteration": 12, "speed_size": [384, 512]}) == WorkerSpeed(12.0, (384, 512))
    for report in (
        {},
        {"ms_per_iteration": 12},
        {"ms_per_iteration": 12, "speed_size": [384]},
        {"ms_per_iteration": 12, "speed_size": [384, True]},
        {"ms_per_iteration": 12, "speed_size": "384x512"},
        {"ms_per_iteration": 0, "speed_size": [384, 512]},
        {"ms_per_iteration": math.inf, "speed_size": [384, 512]},
        {"ms_per_iteration": True, "speed_size": [384, 512]},
        {"ms_per_iteration": "12", "speed_size": [384, 512]},
        {"ms_per_iteration": 10**400, "speed_size": [384, 512]},  # JSON's ints have no limit; float's do
        {"ms_per_iteration": 12, "speed_size": [10**200, 512]},
    ):
        assert speed_of(report) is None, report


def test_a_job_s_work_sums_its_stages_pixels_and_malformed_params_have_none() -> None:
    assert pixel_iterations({"iterations": 10, "height": 30, "width": 40}) == 10 * 30 * 40
    auto = StyleParams(scales="auto", iterations=100).model_dump()
    stages = plan_stages(StyleParams.model_validate(auto), (384, 512))
    assert len(stages) > 1
    work = pixel_iterations(auto)
    assert work == sum(s.iterations * s.size[0] * s.size[1] for s in stages) and work < 100 * 384 * 512
    for params in ({}, {"iterations": "10", "height": 30, "width": 40}, {"iterations": 10, "height": 30}):
        assert pixel_iterations(params) is None, params


def test_the_eta_is_the_mean_run_after_the_jobs_ahead_shared_among_the_workers() -> None:
    work = 100 * 384 * 512
    fast, slow = WorkerSpeed(1000.0, (384, 512)), WorkerSpeed(3000.0, (192, 256))  # 100 s and 1200 s runs
    assert queued_eta(work, 1, [fast]) == 100.0
    assert queued_eta(work, 3, [fast]) == 300.0
    assert queued_eta(work, 2, [fast, slow]) == 650.0 + 650.0 / 2
    assert queued_eta(work, 1, []) is None and queued_eta(None, 1, [fast]) is None
    assert queued_eta(work, None, [fast]) is None


def record(status: str, **fields: Any) -> dict[str, Any]:
    made = JobRecord(id=new_job_id(), params={"iterations": 10, "height": 32, "width": 48}, style_count=1)
    decoded: dict[str, Any] = json.loads(json.dumps(made.model_dump() | {"status": status} | fields))
    return decoded


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
def test_only_a_queued_job_gets_an_eta_from_the_workers_speeds(status: str) -> None:
    speeds = [WorkerSpeed(10.0, (32, 48))]
    view = job_view(record(status, eta_seconds=7.0), 0, speeds)
    JobPublic.model_validate(view)
    assert undeclared_fields(JobPublic, view) == []
    assert view["eta_seconds"] == {"queued": 0.1, "running": 7.0, "succeeded": None}[status]
    assert job_view(record(status, eta_seconds=7.0), 0)["eta_seconds"] == {"running": 7.0}.get(status)
