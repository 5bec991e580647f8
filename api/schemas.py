"""The shapes clients see (spec/api.md), as models for the OpenAPI document.

The read path builds these shapes as plain dicts (`jobs.view`) for speed; the tests validate its
answers against these models, so the document and the answers cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.params import StyleParams
from jobs.record import JobStatus


class FieldError(BaseModel):
    field: str = Field(description='what caused it: "content", "style[1]", "params.iterations", ...')
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem: every error of this API, and a failed job's `error`, has this shape."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URI reference naming the kind of problem; GET it for a page that explains it")
    title: str
    status: int
    detail: str = Field(description="what went wrong and what to change")
    instance: str | None = Field(None, description="the path that answered")
    errors: list[FieldError] | None = Field(None, description="for invalid requests and uploads: each cause")


class JobScale(BaseModel):
    """Coarse-to-fine: the stage that runs and its working size."""

    index: int = Field(description="the stage, counting from 1")
    count: int = Field(description="stages in all (1 without `scales`)")
    height: int
    width: int


class JobProgress(BaseModel):
    iteration: int = Field(description="iterations done, counting from 1, across all stages")
    total: int
    fraction: float
    scale: JobScale | None = Field(description="the stage running (or last run); null before the first")


class JobLosses(BaseModel):
    """null where a loss is not a finite number (the optimisation diverged)."""

    total: float | None
    content: float | None = Field(description="content loss before alpha")
    style: float | None = Field(description="style loss before beta")


class SnapshotLink(BaseModel):
    iteration: int
    url: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: StyleParams = Field(description="the effective parameters, defaults filled in")
    progress: JobProgress
    losses: JobLosses | None
    eta_seconds: float | None
    queue_position: int | None = Field(description="1 for the next job to start; null unless queued")
    cancel_requested: bool = Field(description="a cancel of this running job is pending; it stops within a second")
    snapshots: list[SnapshotLink]
    result_url: str | None
    error: Problem | None = Field(description="why the job failed; null unless it failed")
    weights: str | None = Field(description='"imagenet", "random" or the weights file that made the images')
    checkpointing: bool | None = Field(
        description="whether the run recomputes activations to fit the worker's memory budget; null until it runs"
    )
    memory_bytes: int | None = Field(description="the run's estimated peak memory; null until it runs")


class StatusEvent(BaseModel):
    """The `data` of a `status` event: a change to queued or running, or a cancel asked of a
    running job. A final status comes as the `end` event (the whole job) instead."""

    status: Literal["queued", "running"]
    attempt: int | None = Field(None, description="the run's number (from 1), when it starts running")
    cancel_requested: bool | None = Field(None, description="true when a cancel of the running job was asked")


class ProgressEvent(BaseModel):
    """The `data` of a `progress` event."""

    iteration: int = Field(description="iterations done, counting from 1, across all stages")
    total: int
    fraction: float
    losses: JobLosses
    eta_seconds: float | None
    iterations_per_second: float | None
    scale: JobScale = Field(description="the stage running")
    checkpointing: bool | None = Field(description="whether the run recomputes activations")
    memory_bytes: int | None = Field(description="the run's estimated peak memory")


class SnapshotEvent(BaseModel):
    """The `data` of a `snapshot` event: the snapshot can be fetched from `url` now."""

    iteration: int
    url: str


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class LossHistory(BaseModel):
    """The losses at every progress write of the job, as columns of equal length."""

    iteration: list[int]
    total: list[float]
    content: list[float] = Field(description="content loss before alpha")
    style: list[float] = Field(description="style loss before beta")


class UploadLimits(BaseModel):
    max_styles: int
    max_upload_bytes: int = Field(description="per file")
    max_input_pixels: int = Field(description="width x height of an upload")


class ParameterSchema(BaseModel):
    """What a form needs to offer every parameter: its JSON Schema (this service's limits applied)."""

    parameters: dict[str, Any] = Field(description="JSON Schema of the `params` object, with defaults and limits")
    limits: UploadLimits


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    redis: Literal["ok"]
    workers: int = Field(description="workers that reported in the last few heartbeats")
