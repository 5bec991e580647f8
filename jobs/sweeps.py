"""Sweeps: one job per cell of a parameter grid (POST /sweeps), kept together as a group.

A sweep is a JSON record in Redis (`keys.sweep_key`): its owner, its axes (each a parameter name,
or "style" for the style images one by one, with its values) and its cells, each the id of the
job made for it and the axis values it has. The jobs are ordinary jobs (their record's `sweep`
names the group); the sweep only knows their ids, and reads their state from their own hashes.
Cells are in row-major order: the first axis is the outer one.

It expires with its jobs: it is written with the jobs' TTL, and each read extends it to the
furthest expiry of the jobs it still has, so a sweep is gone once all its jobs are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

import orjson
import redis
from pydantic import BaseModel, Field

from jobs.keys import job_key, snapshot_key, sweep_key
from jobs.record import TERMINAL, decode_value

# A cell whose job no longer exists (deleted on its own, or expired before the sweep was read).
GONE = "gone"
CellStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "gone"]
SweepStatus = Literal["queued", "running", "finished", "canceled"]
CELL_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "canceled", GONE)
STYLE_AXIS = "style"  # the axis of `each_style`: its values are the style images' indices

# What a read of a sweep takes from each job's hash.
_JOB_FIELDS = ("status", "iteration", "params", "snapshots")


class SweepAxis(BaseModel):
    name: str = Field(description='a parameter name, or "style" for the style images one by one (each_style)')
    values: list[Any] = Field(description="the values tried along this axis, in order (style: the images' indices)")
    labels: list[str] | None = Field(
        None, description="for the style axis: the uploaded file names, one per value; null for a parameter"
    )


class SweepCell(BaseModel):
    job: str
    values: dict[str, Any]


class SweepRecord(BaseModel):
    """What Redis holds about a sweep."""

    id: str
    owner: str | None = None  # the API key id that made it; None without keys
    created_at: str
    axes: list[SweepAxis]
    cells: list[SweepCell]
    cancel_requested: bool = False


@dataclass(frozen=True)
class CellState:
    """One cell's job as the sweep reads it: None fields where the job is gone."""

    job_id: str
    values: dict[str, Any]
    status: str
    iteration: int = 0
    total: int = 0
    snapshots: tuple[int, ...] = ()

    @property
    def final(self) -> bool:
        return self.status in TERMINAL or self.status == GONE


# -- the public shape (GET /sweeps/{id}; the OpenAPI document) ---------------------------------


class SweepJobProgress(BaseModel):
    iteration: int
    total: int
    fraction: float


class SweepJob(BaseModel):
    id: str
    values: dict[str, Any] = Field(description="this cell's value on each axis, by axis name")
    status: CellStatus = Field(description='the job\'s status; "gone" once the job was deleted or has expired')
    url: str = Field(description="the job: GET it for everything about it")
    result_url: str | None = Field(description="the result, once the job has succeeded")
    snapshot_url: str | None = Field(description="the job's latest snapshot; null before the first")
    progress: SweepJobProgress


class SweepPublic(BaseModel):
    id: str
    created_at: datetime
    status: SweepStatus = Field(
        description="queued until a job starts; running; finished once every job has ended; canceled when a cancel "
        "was asked and every job has ended, one of them canceled"
    )
    axes: list[SweepAxis] = Field(description="one or two axes; the first is the sheet's rows when there are two")
    jobs: list[SweepJob] = Field(description="one per cell, row-major (the first axis outer)")
    counts: dict[str, int] = Field(description="how many jobs have each status")
    sheet_url: str = Field(description="the contact sheet, a JPEG that fills in as the jobs end")


def sweep_url(sweep_id: str) -> str:
    return f"/sweeps/{sweep_id}"


def sweep_status(record: SweepRecord, states: list[CellState]) -> str:
    if all(state.final for state in states):
        canceled = any(state.status == "canceled" for state in states)
        return "canceled" if record.cancel_requested and canceled else "finished"
    if all(state.status == "queued" for state in states):
        return "queued"
    return "running"


def sweep_view(record: SweepRecord, states: list[CellState]) -> dict[str, Any]:
    """The sweep as clients see it (SweepPublic), from its record and its jobs' states."""
    counts = dict.fromkeys(CELL_STATUSES, 0)
    jobs = []
    for state in states:
        counts[state.status] = counts.get(state.status, 0) + 1
        url = f"/jobs/{state.job_id}"
        latest = state.snapshots[-1] if state.snapshots else None
        jobs.append(
            {
                "id": state.job_id,
                "values": state.values,
                "status": state.status,
                "url": url,
                "result_url": f"{url}/result" if state.status == "succeeded" else None,
                "snapshot_url": f"{url}/snapshots/{latest}" if latest is not None else None,
                "progress": {
                    "iteration": state.iteration,
                    "total": state.total,
                    "fraction": round(state.iteration / state.total, 6) if state.total else 0.0,
                },
            }
        )
    return {
        "id": record.id,
        "created_at": record.created_at,
        "status": sweep_status(record, states),
        "axes": [axis.model_dump() for axis in record.axes],
        "jobs": jobs,
        "counts": counts,
        "sheet_url": f"{sweep_url(record.id)}/sheet",
    }


class SweepStore:
    """Reads and writes of sweeps, on the job store's Redis connection."""

    def __init__(self, client: redis.Redis, ttl_seconds: int) -> None:
        self.redis = client
        self.ttl = ttl_seconds

    def create(self, record: SweepRecord) -> None:
        self.redis.set(sweep_key(record.id), record.model_dump_json(), ex=self.ttl)

    def get(self, sweep_id: str, owner: str | None = None) -> SweepRecord | None:
        """The sweep; None if there is none, or it belongs to another API key than `owner`
        (None: keys are off, every sweep is visible), as for jobs."""
        raw = cast(bytes | None, self.redis.get(sweep_key(sweep_id)))  # bytes: the client decodes nothing
        if raw is None:
            return None
        record = SweepRecord.model_validate_json(raw)
        if owner is not None and record.owner != owner:
            return None
        return record

    def request_cancel(self, record: SweepRecord) -> SweepRecord:
        """Remember that a cancel was asked (the sweep then ends `canceled`); its TTL is kept."""
        record = record.model_copy(update={"cancel_requested": True})
        self.redis.set(sweep_key(record.id), record.model_dump_json(), xx=True, keepttl=True)
        return record

    def delete(self, sweep_id: str) -> None:
        self.redis.delete(sweep_key(sweep_id))

    def cells(self, record: SweepRecord) -> list[CellState]:
        """Each cell's job state, in one round trip; the sweep's expiry follows its jobs'."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.pttl(sweep_key(record.id))
        for cell in record.cells:
            pipe.hmget(job_key(cell.job), list(_JOB_FIELDS))
            pipe.pttl(job_key(cell.job))
        own_ttl, *replies = pipe.execute()
        states = []
        furthest = 0
        for index, cell in enumerate(record.cells):
            fields = cast(list[bytes | None], replies[2 * index])
            furthest = max(furthest, int(replies[2 * index + 1]))
            states.append(_cell_state(cell, fields))
        if furthest > int(own_ttl) > 0:  # PEXPIRE's GT needs Redis 7; the service runs on 6.2 too
            self.redis.pexpire(sweep_key(record.id), furthest)
        return states

    def snapshot(self, job_id: str, iteration: int) -> bytes | None:
        return cast(bytes | None, self.redis.get(snapshot_key(job_id, iteration)))  # bytes: nothing decoded


def _cell_state(cell: SweepCell, fields: list[bytes | None]) -> CellState:
    status, iteration, params, snapshots = fields
    if status is None:
        return CellState(cell.job, cell.values, GONE)
    total = 0
    if params is not None:
        decoded = decode_value(params)
        total = int(decoded.get("iterations", 0)) if isinstance(decoded, dict) else 0
    return CellState(
        cell.job,
        cell.values,
        str(decode_value(status)),
        int(decode_value(iteration)) if iteration is not None else 0,
        total,
        tuple(int(i) for i in decode_value(snapshots)) if snapshots is not None else (),
    )


def sheet_tag(record: SweepRecord, states: list[CellState]) -> str:
    """What the contact sheet shows, in a few bytes: it changes when a cell's status or latest
    snapshot does (a result never changes once there)."""
    parts = [(s.status, s.snapshots[-1] if s.snapshots else 0) for s in states]
    return orjson.dumps([record.id, parts]).decode()
