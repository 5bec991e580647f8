"""Admission by memory: a job that no live worker's budget can hold is refused at submit.

Workers report their device, precision and memory budget with each heartbeat (jobs.store),
and the memory constants they measured on their device at start; the job's peak is estimated
with core.memory for each, with that worker's constants (the written ones for a worker that
reported none) and checkpointing where a plain run does not fit. With no live worker the job is
queued: the worker that takes it checks again.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from api.problems import Problem, validation_problem
from core.decode import Size
from core.memory import JobTooBig, MemoryModel, fit_job
from core.params import StyleParams
from core.scales import plan_stages
from core.sizes import working_size


def admit(reports: Iterable[dict[str, Any]], params: StyleParams, original: Size) -> None:
    """Raise a 422 problem if the job cannot run on any of the live workers that sent `reports`
    (jobs/workers.py), or if its scales do not fit its working size."""
    try:
        plan_stages(params, working_size(original, params))
    except ValueError as exc:
        raise validation_problem([{"field": "params.scales", "message": str(exc)}]) from exc
    workers = [w for w in map(_profile, reports) if w]
    refusals: list[JobTooBig] = []
    for device_type, precision, budget, model in workers:
        whose = "the largest memory budget among the live workers"
        try:
            fit_job(params, original, budget, device_type=device_type, precision=precision, whose=whose, model=model)
        except JobTooBig as refusal:
            refusals.append(refusal)
        else:
            return
    if refusals:  # no live worker: the job is queued, and the worker that takes it checks again
        largest = max(refusals, key=lambda refusal: refusal.budget)
        raise Problem(
            "too-much-memory",
            str(largest),
            working_size={"height": largest.size[0], "width": largest.size[1]},
            memory_needed_bytes=largest.needed,
            memory_budget_bytes=largest.budget,
        )


def _profile(info: dict[str, Any]) -> tuple[Any, Any, int, MemoryModel | None] | None:
    """(device type, precision, budget, memory model) from a heartbeat's report; None if it makes
    no sense. The model is None (the written constants) where the worker reported none, or one
    that makes no sense."""
    device_type, precision, budget = info.get("device_type"), info.get("precision"), info.get("memory_budget_bytes")
    if device_type not in ("cpu", "cuda") or precision not in ("fp32", "bf16") or not isinstance(budget, int):
        return None
    return device_type, precision, budget, MemoryModel.from_report(info.get("memory_model"))
