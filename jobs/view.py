"""What clients see of a job and of its events, built from Redis' data as plain dicts.

The read path answers thousands of polls a second, so it skips model validation here;
`api.schemas.JobPublic` documents the same shape in OpenAPI, and a test holds the two together.
"""

from __future__ import annotations

from typing import Any


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def snapshot_url(job_id: str, iteration: int) -> str:
    return f"/jobs/{job_id}/snapshots/{iteration}"


def progress_view(iteration: int, total: int, scale: dict[str, int] | None = None) -> dict[str, Any]:
    return {"iteration": iteration, "total": total, "fraction": round(iteration / total, 6), "scale": scale}


def job_view(record: dict[str, Any], queue_rank: int | None) -> dict[str, Any]:
    """The job (spec/api.md) from its decoded hash and its rank in the queue (0 = next)."""
    job_id = record["id"]
    status = record["status"]
    total = int(record["params"]["iterations"])
    return {
        "id": job_id,
        "status": status,
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "params": record["params"],
        "progress": progress_view(record.get("iteration", 0), total, record.get("scale")),
        "losses": record.get("losses"),
        "eta_seconds": record.get("eta_seconds") if status == "running" else None,
        "queue_position": queue_rank + 1 if status == "queued" and queue_rank is not None else None,
        "cancel_requested": status == "running" and bool(record.get("cancel_requested")),
        "snapshots": [{"iteration": i, "url": snapshot_url(job_id, i)} for i in record.get("snapshots", [])],
        "result_url": f"{job_url(job_id)}/result" if status == "succeeded" else None,
        "error": record.get("error"),
        "weights": record.get("weights"),
        "checkpointing": record.get("checkpointing"),
        "memory_bytes": record.get("memory_bytes"),
    }


def event_view(job_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """A stream entry's data as the event clients get: progress with its fraction, a snapshot
    with its URL."""
    if kind == "progress" and "total" in data:
        return data | {"fraction": round(data["iteration"] / data["total"], 6)}
    if kind == "snapshot":
        return data | {"url": snapshot_url(job_id, data["iteration"])}
    return data
