"""What a live worker's heartbeat report says about its own device, read defensively.

A job worker measures its device at start (its speed, its memory constants, whether bf16 and
compiling hold there) and reports the outcome with every heartbeat (jobs/workers.py keeps it).
`/readyz`, `/metrics` and a queued job's ETA read it here. A worker of an earlier version sends
none of these keys, and any of them may be malformed: what makes no sense reads as absent
(None, or left out), never as an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from core.memory import MemoryModel
from core.params import StyleParams
from core.scales import plan_stages
from core.sizes import working_size

# The checks a worker runs at start, each reported as {"calibrated", "outcome", "detail"}.
CHECKS: tuple[str, ...] = ("memory", "speed", "precision", "compile", "batch")
MAX_OUTCOME_CHARS = 32  # one short word; longer is not what a worker sends (and not a label value)


@dataclass(frozen=True)
class WorkerSpeed:
    """Milliseconds one iteration took on a worker, at working size `size` (height, width)."""

    ms_per_iteration: float
    size: tuple[int, int]

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


MAX_REPORTED_SIDE = 1 << 16  # past any job's side: a larger one is a malformed report


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)  # an int past float's range (JSON has no limit) raises
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def speed_size(report: Mapping[str, Any]) -> tuple[int, int] | None:
    """The working size its speed was measured at; None if absent or not two positive ints."""
    size = report.get("speed_size")
    if not isinstance(size, list | tuple) or len(size) != 2:
        return None
    if not all(isinstance(side, int) and not isinstance(side, bool) and 0 < side <= MAX_REPORTED_SIDE for side in size):
        return None
    return size[0], size[1]


def ms_per_iteration(report: Mapping[str, Any]) -> float | None:
    value = _number(report.get("ms_per_iteration"))
    return value if value is not None and value > 0 else None


def speed_of(report: Mapping[str, Any]) -> WorkerSpeed | None:
    """The worker's measured speed, or None: one without its size cannot be scaled to a job."""
    ms, size = ms_per_iteration(report), speed_size(report)
    return WorkerSpeed(ms, size) if ms is not None and size is not None else None


def check_entry(report: Mapping[str, Any], what: str) -> dict[str, Any]:
    """One check's {"calibrated", "outcome", "detail"}, each None where absent or malformed."""
    calibration = report.get("calibration")
    entry = calibration.get(what) if isinstance(calibration, dict) else None
    entry = entry if isinstance(entry, dict) else {}
    calibrated, outcome, detail = entry.get("calibrated"), entry.get("outcome"), entry.get("detail")
    return {
        "calibrated": calibrated if isinstance(calibrated, bool) else None,
        "outcome": outcome if isinstance(outcome, str) and 0 < len(outcome) <= MAX_OUTCOME_CHARS else None,
        "detail": detail if isinstance(detail, str) else None,
    }


def calibrated_checks(report: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(what, outcome, calibrated) for each check reported whole: what `/metrics` shows."""
    found = []
    for what in CHECKS:
        entry = check_entry(report, what)
        if entry["calibrated"] is not None and entry["outcome"] is not None:
            found.append((what, entry["outcome"], entry["calibrated"]))
    return found


def readiness_entry(name: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """A live worker as `/readyz` lists it (api.schemas.ReadyWorker): nulls for what it did not say."""
    device, precision, compiled = report.get("device"), report.get("precision"), report.get("compile")
    budget = report.get("memory_budget_bytes")
    model = MemoryModel.from_report(report.get("memory_model"))
    size = speed_size(report)
    reported = report.get("batch")
    batch: Mapping[str, Any] = reported if isinstance(reported, dict) else {}
    return {
        "name": name,
        "device": device if isinstance(device, str) else None,
        "precision": precision if isinstance(precision, str) else None,
        "compile": compiled if isinstance(compiled, bool) else None,
        "memory_budget_bytes": budget if isinstance(budget, int) and not isinstance(budget, bool) else None,
        "memory_model": model.source if model is not None else None,
        "ms_per_iteration": ms_per_iteration(report),
        "speed_size": {"height": size[0], "width": size[1]} if size is not None else None,
        "max_batch": _positive_int(batch.get("max_batch")),
        "batch_max_pixels": _positive_int(batch.get("max_pixels")),
        "calibration": {what: check_entry(report, what) for what in CHECKS},
    }


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63 else None


def pixel_iterations(params: Mapping[str, Any], content: tuple[int, int] | None = None) -> float | None:
    """A job's work: its iterations times their working pixels, summed over its coarse-to-fine
    stages (a convolution's cost is linear in pixels). `params` are the job's effective ones;
    without the content's size (`content`), the height x width box stands for the working size,
    which it bounds. None for params that make no sense."""
    try:
        if params.get("scales") is None and content is None:  # the common case: no model to build
            sides = (params["height"], params["width"], params["iterations"])
            if not all(isinstance(side, int) and not isinstance(side, bool) and side > 0 for side in sides):
                return None
            return float(sides[0] * sides[1] * sides[2])
        style = StyleParams.model_validate(params)
    except (KeyError, TypeError, ValidationError):
        return None
    working = working_size(content or (style.height, style.width), style)
    try:
        stages = plan_stages(style, working)
    except ValueError:  # scales that need the content's own size: the whole job at the working size
        return float(style.iterations * working[0] * working[1])
    return float(sum(stage.iterations * stage.size[0] * stage.size[1] for stage in stages))


def queued_eta(work: float | None, position: int | None, speeds: Sequence[WorkerSpeed]) -> float | None:
    """Seconds until a queued job ends, roughly: `work` (pixel_iterations) at the live workers'
    mean measured speed, after the `position - 1` jobs ahead, taken to be like it, shared among
    those workers. None without a position or a worker that measured its speed.

    The mean, not the fastest: the job goes to whichever worker frees first, not to the fastest,
    and the mean of the run times errs late (it is at least their harmonic mean, which the
    workers' combined throughput gives), which a client can plan with better than too early."""
    if work is None or position is None or position < 1 or not speeds:
        return None
    runs = [speed.ms_per_iteration / 1000 * work / speed.pixels for speed in speeds]
    run = sum(runs) / len(runs)
    return round((position - 1) * run / len(speeds) + run, 1)
