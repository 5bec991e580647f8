"""A worker whose device fails its checks at start: it falls back, says why everywhere, and runs jobs.

The faults are injected (NST_TEST_FAULTS): compiling raises, and bf16's losses stray from fp32's.
The worker is asked for bf16 and compiling (NST_PRECISION, NST_COMPILE), as a GPU worker would
run by default, on this machine's CPU.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import SAMPLES
from tests.services import Service, StartService, is_final, poll, submit

FAULTY = {
    "NST_CALIBRATE": "1",
    "NST_PRECISION": "bf16",
    "NST_COMPILE": "1",
    "NST_TEST_FAULTS": "compile,bf16",
    "NST_CALIBRATION_SPEED_SIZE": "32x32",
    "NST_CALIBRATION_MEMORY_SIDES": "128,192",
}


@pytest.fixture(scope="module")
def service(start_service: StartService) -> Service:
    return start_service(FAULTY)


def test_a_worker_whose_compile_raises_and_whose_bf16_strays_serves_eager_fp32_says_why_and_runs_jobs(
    service: Service, client: httpx.Client
) -> None:
    (worker,) = client.get("/readyz").json()["live_workers"]
    assert (worker["precision"], worker["compile"]) == ("fp32", False)
    precision, compiled = worker["calibration"]["precision"], worker["calibration"]["compile"]
    assert precision["calibrated"] and precision["outcome"] == "fp32"
    assert "strays" in precision["detail"] and "serving fp32" in precision["detail"]
    assert compiled["calibrated"] and compiled["outcome"] == "eager"
    assert "NST_TEST_FAULTS=compile" in compiled["detail"] and "serving eagerly" in compiled["detail"]
    assert worker["memory_model"] in ("measured", "written") and worker["ms_per_iteration"] > 0
    # The same outcomes in the worker's log (one line a check) and in /metrics.
    logs = service.logs(tail=0)
    assert "calibration precision on cpu: fp32 (bf16's loss strays" in logs
    assert "calibration compile on cpu: eager (compiling failed" in logs
    metrics = [line for line in client.get("/metrics").text.splitlines() if line.startswith("nst_worker_")]
    assert any(
        line.startswith('nst_worker_calibrated{outcome="fp32",what="precision",') and line.endswith(" 1.0")
        for line in metrics
    ), metrics
    assert any(line.startswith("nst_worker_ms_per_iteration{") for line in metrics), metrics
    # And it runs jobs, eagerly in fp32, whatever NST_PRECISION and NST_COMPILE asked.
    job = submit(
        client, SAMPLES / "coffee.png", [SAMPLES / "starry_night.jpg"], {"height": 32, "width": 32, "iterations": 3}
    )
    assert job.status_code == 202, job.text
    assert poll(client, job.json()["id"], is_final)["status"] == "succeeded"
