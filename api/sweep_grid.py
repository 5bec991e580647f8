"""The grid of `POST /sweeps`: its axes, its cells, and each cell's parameters, checked exactly as
`POST /jobs` checks a job's (api.uploads.parse_params) before any job is made."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

from api.problems import Problem, validation_problem
from api.uploads import parse_params
from core.params import StyleParams
from jobs.settings import Settings
from jobs.sweeps import STYLE_AXIS, SweepAxis

MAX_AXES = 2
TRUE = frozenset({"true", "1", "yes", "on"})
FALSE = frozenset({"false", "0", "no", "off", ""})
MAX_LABEL_CHARS = 40  # a style's file name, as the view and the sheet show it


@dataclass(frozen=True)
class SweepPlan:
    """The axes (grid axes in the order given, then the style axis) and each cell's values, row-major."""

    axes: list[SweepAxis]
    cells: list[dict[str, Any]]

    @property
    def each_style(self) -> bool:
        return any(axis.name == STYLE_AXIS for axis in self.axes)


def parse_flag(raw: str | None, field: str) -> bool:
    value = (raw or "").strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise validation_problem([{"field": field, "message": 'must be "true" or "false" (or 1 or 0)'}])


def parse_object(raw: str | None, field: str) -> dict[str, Any]:
    """A form field holding a JSON object ({} when absent or blank); 422 naming `field` otherwise."""
    if raw is None or not raw.strip():
        return {}
    try:
        given = json.loads(raw)
    except ValueError as exc:
        raise validation_problem([{"field": field, "message": f"not valid JSON: {exc}"}]) from exc
    except RecursionError as exc:
        raise validation_problem([{"field": field, "message": "nested too deeply"}]) from exc
    if not isinstance(given, dict):
        raise validation_problem([{"field": field, "message": "must be a JSON object"}])
    return given


def parse_grid(raw: str | None) -> dict[str, list[Any]]:
    """The `grid` field: parameter name -> a non-empty list of values; unknown names are refused."""
    grid = parse_object(raw, "grid")
    errors = []
    for name, values in grid.items():
        if name not in StyleParams.model_fields:
            errors.append({"field": f"grid.{name}", "message": "not a parameter (GET /parameters lists them)"})
        elif not isinstance(values, list) or not values:
            errors.append({"field": f"grid.{name}", "message": "must be a non-empty list of values"})
    if errors:
        raise validation_problem(errors)
    return grid


def style_label(filename: str | None, index: int) -> str:
    """An upload's name as a label: printable, short; `style N` without one."""
    name = "".join(ch for ch in (filename or "") if ch.isprintable()).strip()
    return name[:MAX_LABEL_CHARS] or f"style {index}"


def plan_sweep(grid: dict[str, list[Any]], each_style: bool, style_names: list[str], settings: Settings) -> SweepPlan:
    """The axes and cells, within the limits: one or two axes, at most NST_MAX_SWEEP_CELLS cells."""
    axes = [SweepAxis(name=name, values=values) for name, values in grid.items()]
    if each_style:
        axes.append(SweepAxis(name=STYLE_AXIS, values=list(range(len(style_names))), labels=style_names))
    if not axes:
        raise validation_problem([{"field": "grid", "message": "give a grid of at least one parameter, or each_style"}])
    if len(axes) > MAX_AXES:
        listed = ", ".join(axis.name for axis in axes)
        message = f"at most {MAX_AXES} axes (each_style counts as one); got {len(axes)}: {listed}"
        raise validation_problem([{"field": "grid", "message": message}])
    count = math.prod(len(axis.values) for axis in axes)
    if count > settings.max_sweep_cells:
        sizes = " x ".join(str(len(axis.values)) for axis in axes)
        message = (
            f"{sizes} = {count} cells; this service makes at most {settings.max_sweep_cells} (NST_MAX_SWEEP_CELLS)"
        )
        raise validation_problem([{"field": "grid", "message": message}])
    names = [axis.name for axis in axes]
    cells = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(axis.values for axis in axes))]
    return SweepPlan(axes, cells)


def cell_params(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A cell's parameters: the base with the cell's values. A style cell has one style image, so
    the base's style_blend_weights (one per image) mean nothing to it and are left out."""
    params = dict(base)
    if STYLE_AXIS in values:
        params.pop("style_blend_weights", None)
    params.update({name: value for name, value in values.items() if name != STYLE_AXIS})
    return params


def cell_label(values: dict[str, Any]) -> str:
    return ", ".join(f"{name}={json.dumps(value)}" for name, value in values.items())


def check_cells(base: dict[str, Any], plan: SweepPlan, style_count: int, settings: Settings) -> list[str]:
    """Each cell's `params` JSON, every one checked as POST /jobs checks a job's; a 422 naming
    each bad grid value (`grid.style_weight[2]`), or the parameter and the cell, otherwise."""
    positions = {axis.name: axis.values for axis in plan.axes}
    texts: list[str] = []
    failures: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for values in plan.cells:
        text = json.dumps(cell_params(base, values))
        texts.append(text)
        try:
            parse_params(text, 1 if STYLE_AXIS in values else style_count, settings)
        except Problem as problem:
            failures.append((values, list(problem.body().get("errors") or [])))
    if not failures:
        return texts
    errors: list[dict[str, Any]] = []
    every_cell = len(failures) == len(plan.cells)
    common = set.intersection(*({(e["field"], e["message"]) for e in found} for _, found in failures))
    for values, found in failures:
        for error in found:
            field = str(error["field"])
            message = str(error["message"])
            axis = next(
                (name for name in values if field == f"params.{name}" or field.startswith(f"params.{name}.")), None
            )
            if axis is not None:
                index = positions[axis].index(values[axis])
                field = f"grid.{axis}[{index}]" + field.removeprefix(f"params.{axis}")
            elif not (every_cell and (field, message) in common):  # a base parameter wrong in every cell is said once
                message += f" (in the cell {cell_label(values)})"
            if {"field": field, "message": message} not in errors:
                errors.append({"field": field, "message": message})
    raise validation_problem(errors)
