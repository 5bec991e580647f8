"""Logs: one record per event, a traceback whole inside one record, and NST_LOG_FORMAT=json as one
JSON object per line with the job id, from real worker and API processes."""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.logs import JobIdFilter, JsonFormatter, job_context
from tests.conftest import SAMPLES
from tests.services import HANG, is_final, poll, serve, submit

COFFEE = SAMPLES / "coffee.png"
STARRY = SAMPLES / "starry_night.jpg"


def json_logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(JobIdFilter())
    logger = logging.getLogger("test.logs.json")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_json_record_is_one_line_with_the_whole_traceback_and_the_job_id() -> None:
    stream = io.StringIO()
    logger = json_logger(stream)
    with job_context("abc123"):
        try:
            {}["missing"]
        except KeyError:
            logger.exception("lookup failed\nacross two lines")
    logger.info("outside")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["job_id"] == "abc123" and first["level"] == "ERROR"
    assert first["message"] == "lookup failed\nacross two lines"
    assert first["exception"].startswith("Traceback") and "KeyError: 'missing'" in first["exception"]
    assert "job_id" not in second


def test_a_bad_log_format_is_refused_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "core.cli", "--help"], env={"NST_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=HANG,
    )  # fmt: skip
    assert done.returncode == 2 and "NST_LOG_FORMAT" in done.stderr and done.stderr.count("\n") == 1


def parse_lines(path: Path) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise AssertionError(f"not one JSON object per line in {path.name}: {line!r}") from exc
    return records


def problems_logged(path: Path) -> bool:
    """Whether the JSON log holds a WARNING or worse yet."""
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line still being written
        if isinstance(record, dict) and record.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            return True
    return False


@pytest.mark.service  # a stack of its own, whose Redis it kills
def test_worker_and_api_write_json_lines_with_job_ids_and_a_lost_redis_is_a_few_whole_records(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, {"NST_LOG_FORMAT": "json"}) as service:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            job = submit(client, COFFEE, [STARRY], {"iterations": 5, "height": 16, "width": 16}).json()
            assert poll(client, job["id"], is_final)["status"] == "succeeded"
        # Redis goes away under the worker: its reconnect attempts and the heartbeat's failures are
        # logged, each as a record (no one-token lines from a redirected stderr).
        assert service.redis is not None
        service.redis.send_signal(signal.SIGKILL)
        service.redis.wait()
        lost = time.monotonic()
        # Six seconds of reconnect attempts and failed heartbeats, and at least one of them logged.
        while time.monotonic() - lost < 6 or not problems_logged(tmp_path / "worker0.log"):
            assert time.monotonic() - lost < HANG, "losing Redis was not logged"
            time.sleep(0.2)
    # Read after the processes stopped: their shutdown lines are records too.
    worker_records = parse_lines(tmp_path / "worker0.log")
    api_records = parse_lines(tmp_path / "api.log")
    assert {"time", "level", "logger", "message"} <= set(worker_records[0])
    mine = [r for r in worker_records if r.get("job_id") == job["id"]]
    assert any("started" in r["message"] for r in mine), worker_records
    after_loss = [r for r in worker_records if r["level"] in ("WARNING", "ERROR", "CRITICAL")]
    assert after_loss, "losing Redis was not logged"
    assert len(after_loss) < 50, [r["message"] for r in after_loss]
    assert all(len(r["message"]) > 3 for r in after_loss), [r["message"] for r in after_loss]
    assert any(r["logger"].startswith("uvicorn") for r in api_records)
