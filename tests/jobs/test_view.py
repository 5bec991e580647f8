"""The one public shape of a job (jobs/view.py): what job_view builds is what the models document."""

from __future__ import annotations

import json
from typing import Any

import pytest

from jobs.problems import problem_body
from jobs.record import JobRecord, new_job_id
from jobs.view import JobPublic, ProgressEvent, SnapshotEvent, event_view, job_view, undeclared_fields
from jobs.webhooks import message

SCALE = {"index": 1, "count": 1, "height": 32, "width": 48}


def record(status: str, **fields: Any) -> dict[str, Any]:
    """A decoded job hash as Redis would give it back, in `status`."""
    made = JobRecord(id=new_job_id(), params={"iterations": 10, "height": 32, "width": 48}, style_count=1)
    return json.loads(json.dumps(made.model_dump() | {"status": status} | fields))


RECORDS = {
    "queued": record("queued"),
    "running": record(
        "running", started_at="2026-01-01T00:00:00.000Z", iteration=4, scale=SCALE, snapshots=[1],
        losses={"total": 3.0, "content": 1.0, "style": 2.0}, eta_seconds=1.5, memory_bytes=10**6, checkpointing=False,
        cancel_requested=True,
    ),
    "succeeded": record("succeeded", finished_at="2026-01-01T00:01:00.000Z", iteration=10, weights="random"),
    "failed": record("failed", error=problem_body("diverged", "every loss was NaN")),
    "canceled": record("canceled"),
}  # fmt: skip


@pytest.mark.parametrize("status", RECORDS)
def test_every_status_s_view_is_exactly_the_documented_shape(status: str) -> None:
    view = job_view(RECORDS[status], 0)
    JobPublic.model_validate(view)
    assert undeclared_fields(JobPublic, view) == []
    assert set(view) == set(JobPublic.model_fields)  # and the document shows nothing the answers lack


def test_a_field_the_models_lack_is_found_at_any_depth() -> None:
    view = job_view(RECORDS["running"], None)
    assert undeclared_fields(JobPublic, view | {"owner": "k1"}) == ["owner"]
    assert undeclared_fields(JobPublic, view | {"progress": view["progress"] | {"tenant": 1}}) == ["progress.tenant"]
    snapshots = [{"iteration": 1, "url": "/x", "bytes": 3}]
    assert undeclared_fields(JobPublic, view | {"snapshots": snapshots}) == ["snapshots[0].bytes"]
    # A problem may carry members of its own (RFC 9457): those are documented as allowed.
    failed = job_view(RECORDS["failed"], None)
    assert undeclared_fields(JobPublic, failed | {"error": failed["error"] | {"errors": []}}) == []


def test_events_and_webhooks_carry_the_same_shapes() -> None:
    job_id = RECORDS["running"]["id"]
    progress = {
        "iteration": 4, "total": 10, "losses": {"total": 3.0, "content": 1.0, "style": 2.0}, "eta_seconds": 1.0,
        "iterations_per_second": 2.0, "scale": SCALE, "checkpointing": False, "memory_bytes": 10,
    }  # fmt: skip
    for model, kind, data in ((ProgressEvent, "progress", progress), (SnapshotEvent, "snapshot", {"iteration": 1})):
        event = event_view(job_id, kind, data)
        model.model_validate(event)
        assert undeclared_fields(model, event) == []
    delivered = json.loads(message("completed", job_view(RECORDS["succeeded"], None)))
    assert undeclared_fields(JobPublic, delivered["data"]) == [] and delivered["type"] == "job.completed"
