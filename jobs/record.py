"""The job record: what Redis holds about a job (images apart), and the one decoder of its hash.

A job is a hash `nst:job:{id}` (jobs/keys.py) whose fields each hold one JSON value, so that the
worker's progress writes and the API's cancel touch different fields and never overwrite each
other. `decode_fields` reads it back: the API's read path as a plain dict (thousands of polls a
second: no model validation), everything else as a `JobRecord`.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})
EventKind = Literal["status", "progress", "snapshot"]

_ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    """128 random bits: unguessable, and safe in a URL and a Redis key."""
    return secrets.token_hex(16)


def is_job_id(value: str) -> bool:
    """Whether `value` could be one of our ids; anything else is answered 404 without Redis."""
    return _ID_PATTERN.fullmatch(value) is not None


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def decode_value(value: bytes | str) -> Any:
    """One field's JSON: orjson (most of a poll's own work is this), or the standard library's
    parser for the NaN and Infinity a worker of an earlier version may have written."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return json.loads(value)


def decode_fields(fields: dict[bytes, bytes]) -> dict[str, Any]:
    """The job hash as Redis returns it, each field's JSON decoded."""
    return {name.decode(): decode_value(value) for name, value in fields.items()}


def encode_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Fields as the hash stores them, each value JSON."""
    return {name: json.dumps(value) for name, value in fields.items()}


class JobRecord(BaseModel):
    """What Redis holds about a job (images apart)."""

    id: str
    status: JobStatus = "queued"
    created_at: str = Field(default_factory=utc_now)
    started_at: str | None = None
    finished_at: str | None = None
    params: dict[str, Any]
    style_count: int
    sequence: int = 0
    iteration: int = 0
    losses: dict[str, float] | None = None
    iterations_per_second: float | None = None
    eta_seconds: float | None = None
    snapshots: list[int] = Field(default_factory=list)
    error: dict[str, Any] | None = None
    weights: str | None = None
    attempts: int = 0
    worker: str | None = None
    cancel_requested: bool = False  # a cancel of the running job is pending
    run_token: str | None = None  # names the attempt that holds the job; stale runs see it change
    # Memory (core.memory): the run's estimate of its peak and whether it recomputes activations.
    memory_bytes: int | None = None
    checkpointing: bool | None = None
    # Coarse-to-fine: the stage running, {"index": from 1, "count", "height", "width"}.
    scale: dict[str, int] | None = None
    owner: str | None = None  # the id of the API key that made the job (never the key); None without keys
    input_bytes: int = 0  # what its uploads take, until it ends (then they are deleted)
    # Its inputs, result and checkpoint are in the blob store (jobs/blobs.py). False: a job of an
    # earlier version, whose files are in Redis; it is still served from there until it expires.
    blobs: bool = False
    finished_by: str | None = None  # the run token that ended it: a repeated finish knows it was its own
    # Webhooks (jobs/webhooks.py): the URL checked at submit, and the events it gets.
    webhook: str | None = None
    webhook_events: list[str] = Field(default_factory=list)
    # Jobs with the same key can share one batched optimisation (core.batching); None: it runs alone.
    batch_key: str | None = None
    content_size: list[int] | None = None  # the content image's [height, width]
    sweep: str | None = None  # the sweep the job is a cell of (jobs/sweeps.py), if any

    @property
    def total(self) -> int:
        return int(self.params["iterations"])

    def to_redis(self) -> dict[str, str]:
        return encode_fields(self.model_dump())

    @classmethod
    def from_redis(cls, fields: dict[bytes, bytes]) -> JobRecord:
        return cls.model_validate(decode_fields(fields))


def history_line(iteration: int, losses: dict[str, float]) -> str:
    """One line of the loss history: compact, and parsed back by `parse_history`."""
    return f"{iteration} {losses['total']:.7g} {losses['content']:.7g} {losses['style']:.7g}\n"


def parse_history(text: str) -> dict[str, list[float]]:
    """The history as columns: {"iteration": [...], "total": [...], "content": [...], "style": [...]}."""
    columns: dict[str, list[float]] = {"iteration": [], "total": [], "content": [], "style": []}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 4:
            continue
        columns["iteration"].append(int(parts[0]))
        for name, value in zip(("total", "content", "style"), parts[1:], strict=True):
            columns[name].append(float(value))
    return columns
