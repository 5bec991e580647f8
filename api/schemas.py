"""What clients see of a job (spec/api.md), built from the record in Redis."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from worker.state import JobRecord, JobStatus


class JobProgress(BaseModel):
    iteration: int = Field(description="iterations done, counting from 1")
    total: int
    fraction: float


class JobLosses(BaseModel):
    total: float
    content: float = Field(description="content loss before alpha")
    style: float = Field(description="style loss before beta")


class SnapshotLink(BaseModel):
    iteration: int
    url: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    created_at: str
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any] = Field(description="the effective parameters, defaults filled in")
    progress: JobProgress
    losses: JobLosses | None
    eta_seconds: float | None
    queue_position: int | None = Field(description="1 for the next job to start; null unless queued")
    snapshots: list[SnapshotLink]
    result_url: str | None
    error: dict[str, Any] | None = Field(description="a problem object when the job failed")
    weights: str | None = Field(description='"imagenet", "random" or the weights file that made the images')

    @classmethod
    def from_record(cls, record: JobRecord, queue_position: int | None) -> JobPublic:
        base = f"/jobs/{record.id}"
        return cls(
            id=record.id,
            status=record.status,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            params=record.params,
            progress=JobProgress(
                iteration=record.iteration, total=record.total, fraction=round(record.iteration / record.total, 6)
            ),
            losses=JobLosses(**record.losses) if record.losses else None,
            eta_seconds=None if record.status != "running" else record.eta_seconds,
            queue_position=queue_position if record.status == "queued" else None,
            snapshots=[SnapshotLink(iteration=i, url=f"{base}/snapshots/{i}") for i in record.snapshots],
            result_url=f"{base}/result" if record.status == "succeeded" else None,
            error=record.error,
            weights=record.weights,
        )


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class Readiness(BaseModel):
    redis: str
    workers: int
