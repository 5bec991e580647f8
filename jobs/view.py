"""The one public shape of a job: what GET /jobs/{id}, the listing, the `job` and `end` events,
the webhooks and the OpenAPI document all show.

`job_view` builds it as a plain dict from the decoded job hash (the read path answers thousands
of polls a second, so it skips model validation); the models below document the same shape for
OpenAPI, and `undeclared_fields` lets the tests hold the two together: an answer with a field the
models lack fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.params import StyleParams
from jobs.record import JobStatus
from jobs.worker_reports import WorkerSpeed, pixel_iterations, queued_eta


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
    eta_seconds: float | None = Field(
        description="seconds until it ends, roughly: a running job's from its own speed; a queued job's from "
        "the live workers' measured speeds and its place in the queue (null if no live worker measured one)"
    )
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
    sweep: str | None = Field(None, description="the id of the sweep this job is a cell of (GET /sweeps/{id}), if any")


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


class LossHistory(BaseModel):
    """The losses at every progress write of the job, as columns of equal length."""

    iteration: list[int]
    total: list[float]
    content: list[float] = Field(description="content loss before alpha")
    style: list[float] = Field(description="style loss before beta")


def job_url(job_id: str) -> str:
    return f"/jobs/{job_id}"


def snapshot_url(job_id: str, iteration: int) -> str:
    return f"/jobs/{job_id}/snapshots/{iteration}"


def progress_view(iteration: int, total: int, scale: dict[str, int] | None = None) -> dict[str, Any]:
    return {"iteration": iteration, "total": total, "fraction": round(iteration / total, 6), "scale": scale}


def job_view(record: dict[str, Any], queue_rank: int | None, speeds: Sequence[WorkerSpeed] = ()) -> dict[str, Any]:
    """The job (docs/api.md) from its decoded hash and its rank in the queue (0 = next); a queued
    job's ETA from `speeds`, the live workers' measured ones (none: null)."""
    job_id = record["id"]
    status = record["status"]
    total = int(record["params"]["iterations"])
    position = queue_rank + 1 if status == "queued" and queue_rank is not None else None
    if status == "running":
        eta = record.get("eta_seconds")
    elif position is not None and speeds:
        eta = queued_eta(pixel_iterations(record["params"]), position, speeds)
    else:
        eta = None
    return {
        "id": job_id,
        "status": status,
        "created_at": record["created_at"],
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "params": record["params"],
        "progress": progress_view(record.get("iteration", 0), total, record.get("scale")),
        "losses": record.get("losses"),
        "eta_seconds": eta,
        "queue_position": position,
        "cancel_requested": status == "running" and bool(record.get("cancel_requested")),
        "snapshots": [{"iteration": i, "url": snapshot_url(job_id, i)} for i in record.get("snapshots", [])],
        "result_url": f"{job_url(job_id)}/result" if status == "succeeded" else None,
        "error": record.get("error"),
        "weights": record.get("weights"),
        "checkpointing": record.get("checkpointing"),
        "memory_bytes": record.get("memory_bytes"),
        "sweep": record.get("sweep"),
    }


def event_view(job_id: str, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """A stream entry's data as the event clients get: progress with its fraction, a snapshot
    with its URL."""
    if kind == "progress" and "total" in data:
        return data | {"fraction": round(data["iteration"] / data["total"], 6)}
    if kind == "snapshot":
        return data | {"url": snapshot_url(job_id, data["iteration"])}
    return data


def undeclared_fields(model: type[BaseModel], data: Any, path: str = "") -> list[str]:
    """The paths of the members of `data` that `model` does not declare (its nested models and
    their lists and optionals included); a model that allows extra members (Problem) allows them."""
    if not isinstance(data, dict) or model.model_config.get("extra") == "allow":
        return []
    found = []
    for name, value in data.items():
        where = f"{path}.{name}" if path else name
        field = model.model_fields.get(name)
        if field is None:
            found.append(where)
            continue
        for inner in _models_in(field.annotation):
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                found += undeclared_fields(inner, item, f"{where}[{index}]" if isinstance(value, list) else where)
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models named in an annotation such as `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in getattr(annotation, "__args__", ()) for model in _models_in(arg)]
