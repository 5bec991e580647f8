"""Admission by memory: a job that no live worker's budget can hold is refused at submit.

Workers report their device, precision and memory budget with each heartbeat (jobs.store);
the job's peak is estimated with core.memory for each, with checkpointing where a plain run
does not fit. With no live worker the job is queued: the worker that takes it checks again.
"""

from __future__ import annotations

from typing import Any

from api.problems import Problem, validation_problem
from core.decode import Size
from core.memory import plan, too_big_detail
from core.params import StyleParams
from core.scales import plan_stages
from core.sizes import working_size
from jobs.settings import Settings
from jobs.store import JobStore


def admit(store: JobStore, settings: Settings, params: StyleParams, original: Size) -> None:
    """Raise a 422 problem if the job cannot run on any live worker (or its scales do not fit
    its working size)."""
    size = working_size(original, params)
    try:
        stages = plan_stages(params, size)
    except ValueError as exc:
        raise validation_problem([{"field": "params.scales", "message": str(exc)}]) from exc
    workers = [w for w in map(_profile, store.live_worker_info(3 * settings.worker_heartbeat_seconds)) if w]
    if not workers:
        return
    needed_on_largest = 0
    largest = -1
    for device_type, precision, budget in workers:
        estimate = plan(
            size,
            params,
            budget,
            device_type=device_type,
            precision=precision,
            original=original,
            sizes=[stage.size for stage in stages[:-1]],
        )
        if estimate.bytes <= budget:
            return
        if budget > largest:
            largest, needed_on_largest = budget, estimate.bytes
    raise Problem(
        422,
        "too-much-memory",
        "Job too large for memory",
        too_big_detail(size, needed_on_largest, largest, "the largest memory budget among the live workers"),
        working_size={"height": size[0], "width": size[1]},
        memory_needed_bytes=needed_on_largest,
        memory_budget_bytes=largest,
    )


def _profile(info: dict[str, Any]) -> tuple[Any, Any, int] | None:
    """(device type, precision, budget) from a heartbeat's report; None if it makes no sense."""
    device_type, precision, budget = info.get("device_type"), info.get("precision"), info.get("memory_budget_bytes")
    if device_type not in ("cpu", "cuda") or precision not in ("fp32", "bf16") or not isinstance(budget, int):
        return None
    return device_type, precision, budget
