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


class Readiness(BaseModel):
    redis: Literal["ok"]
    workers: int = Field(description="workers that reported in the last few heartbeats")
