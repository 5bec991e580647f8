"""Coarse-to-fine schedules: the working sizes a job runs at, in turn, and how many steps each.

`scales: "auto"` follows crowsonkb/style-transfer-pytorch: sizes from the working size's long
side down by sqrt(2) while at least 128 px, run smallest first; the first stage takes twice the
steps of each later one (crowsonkb: 1000, then 500 each), here sharing the job's `iterations`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.decode import Size
from core.params import MIN_SIDE, StyleParams

AUTO_START = 128  # px, crowsonkb's smallest long side


@dataclass(frozen=True)
class Stage:
    size: Size  # (height, width) of the working image at this stage
    first: int  # the job-wide number of its first iteration (from 1)
    last: int  # and of its last

    @property
    def iterations(self) -> int:
        return self.last - self.first + 1


def auto_sizes(long_side: int, start: int = AUTO_START) -> list[int]:
    """Long sides from `long_side` down by sqrt(2) while >= `start`, smallest first."""
    sizes = {long_side}
    step = 1
    while (size := round(long_side / 2 ** (step / 2))) >= start:
        sizes.add(size)
        step += 1
    return sorted(sizes)


def auto_iterations(total: int, count: int) -> list[int]:
    """`total` steps over `count` stages in the ratio 2:1:1:..., the remainder to the last."""
    shares = [2, *[1] * (count - 1)]
    counts = [max(1, total * share // sum(shares)) for share in shares]
    counts[-1] += total - sum(counts)
    while counts[-1] < 1:  # too few steps for the ratio: every stage keeps at least one
        largest = max(range(count - 1), key=lambda i: counts[i])
        counts[largest] -= 1
        counts[-1] += 1
    return counts


def stage_size(long_side: int, working: Size) -> Size:
    """`working` scaled so that its long side is `long_side` (the working size's aspect kept)."""
    factor = long_side / max(working)
    return max(MIN_SIDE, round(working[0] * factor)), max(MIN_SIDE, round(working[1] * factor))


def plan_stages(params: StyleParams, working: Size) -> list[Stage]:
    """The stages of a job whose final working size is `working`; ValueError if they do not fit it."""
    long_side = max(working)
    if params.scales is None:
        sides, counts = [long_side], [params.iterations]
    elif params.scales == "auto":
        sides = auto_sizes(long_side)
        sides = sides[-params.iterations :]  # fewer steps than stages: the largest ones, a step each
        counts = auto_iterations(params.iterations, len(sides))
    else:
        sides = [stage.size for stage in params.scales]
        counts = [stage.iterations for stage in params.scales]
        if sides[-1] != long_side:
            raise ValueError(f"scales: the last size must be the working size's long side, {long_side} px")
    stages = []
    first = 1
    for side, count in zip(sides, counts, strict=True):
        size = working if side == long_side else stage_size(side, working)
        stages.append(Stage(size=size, first=first, last=first + count - 1))
        first += count
    return stages


def stage_of(stages: list[Stage], iteration: int) -> int:
    """Index of the stage that runs `iteration` (0 and before: the first)."""
    for index, stage in enumerate(stages):
        if iteration <= stage.last:
            return index
    return len(stages) - 1


__all__ = ["AUTO_START", "Stage", "auto_iterations", "auto_sizes", "plan_stages", "stage_of", "stage_size"]
