"""The API's own answers for the OpenAPI document; a job's shapes are in jobs/view.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jobs.view import JobPublic


class JobList(BaseModel):
    items: list[JobPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


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


class CalibrationCheck(BaseModel):
    """One check a worker ran on its device at start; nulls from a worker that did not report it."""

    calibrated: bool | None = Field(description="true: it ran to the end on this device; false: skipped or failed")
    outcome: str | None = Field(
        description='one short word: "measured", "written", "bf16", "fp32", "compiled", "eager", "batched", "alone", '
        '"skipped", "failed"'
    )
    detail: str | None = Field(description="one sentence saying why")


class WorkerCalibration(BaseModel):
    memory: CalibrationCheck = Field(description="the memory constants: fitted to this device's peaks, or written")
    speed: CalibrationCheck = Field(description="milliseconds per iteration, measured")
    precision: CalibrationCheck = Field(description="bf16 checked against fp32 from the same start")
    compile: CalibrationCheck = Field(description="torch.compile checked against eager")
    batch: CalibrationCheck = Field(description="batched jobs timed against one at a time (NST_MAX_BATCH=auto)")


class SpeedSize(BaseModel):
    height: int
    width: int


class ReadyWorker(BaseModel):
    """A live worker and what it measured on its device at start (nulls: a worker of an earlier
    version, or a value that made no sense)."""

    name: str = Field(description="host:pid")
    device: str | None = Field(description='"cpu", "cuda:0", ...')
    precision: str | None = Field(description='"fp32" or "bf16": what it serves in')
    compile: bool | None = Field(description="whether it serves with torch.compile")
    memory_budget_bytes: int | None = Field(description="its memory budget for a job")
    memory_model: Literal["measured", "written"] | None = Field(
        description="where the memory constants admission uses for it come from: fitted on its device, or written"
    )
    ms_per_iteration: float | None = Field(description="an iteration at `speed_size`, with the path it serves")
    speed_size: SpeedSize | None = Field(description="the working size its speed was measured at")
    max_batch: int | None = Field(None, description="the most jobs it optimises together (1: it never batches)")
    batch_max_pixels: int | None = Field(
        None, description="the largest working size, in pixels, it batches at; null: any (memory permitting)"
    )
    calibration: WorkerCalibration


class Readiness(BaseModel):
    redis: Literal["ok"]
    workers: int = Field(description="workers that reported in the last few heartbeats")
    live_workers: list[ReadyWorker] = Field(description="those workers, by name, with what each measured at start")
