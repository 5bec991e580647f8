"""Admission's arithmetic: the size it plans from, and which live workers could hold a job."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from api.admission import admit
from api.decode_budget import PixelBudget
from api.problems import Problem
from api.uploads import check_image
from core.memory import estimate_bytes
from core.params import StyleParams
from jobs.settings import Settings


def test_the_planned_size_is_the_upright_one_the_worker_sees() -> None:
    # A phone portrait: stored 40x30 (landscape), EXIF orientation 6 (rotate to 30x40 portrait).
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (90, 120, 150)).save(buffer, "JPEG", exif=exif.tobytes())
    assert check_image(buffer.getvalue(), "content", Settings(), PixelBudget(10**6, 1)) == (30, 40)


def worker(budget: int, device_type: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    return {"device": device_type, "device_type": device_type, "precision": precision, "memory_budget_bytes": budget}


def test_a_job_is_admitted_when_any_live_worker_can_hold_it_and_refused_naming_the_largest() -> None:
    params = StyleParams(height=1024, width=1024)
    lean = estimate_bytes((1024, 1024), params, checkpointing=True, original=(400, 600))
    admit([], params, (400, 600))  # nobody alive: queued, the worker decides
    admit([worker(10**6), worker(lean)], params, (400, 600))
    with pytest.raises(Problem) as refused:
        admit([worker(10**6), worker(lean - 1), {"junk": True}], params, (400, 600))
    problem = refused.value
    assert problem.status == 422 and problem.kind == "too-much-memory"
    assert problem.body()["memory_budget_bytes"] == lean - 1 and problem.body()["memory_needed_bytes"] == lean
    assert "1024x1024" in problem.detail


def test_scales_that_do_not_end_at_the_working_size_are_a_422_on_params_scales() -> None:
    params = StyleParams(keep_aspect=True, scales=[{"size": 256, "iterations": 2}, {"size": 512, "iterations": 2}])
    with pytest.raises(Problem) as refused:
        admit([], params, (400, 300))  # portrait: the long side is 384, not 512
    assert refused.value.status == 422
    assert refused.value.body()["errors"][0]["field"] == "params.scales"
