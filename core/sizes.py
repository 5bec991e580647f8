"""Working sizes: the box a job optimises in, and its style images' sizes. No torch: the API
checks a job's size (and its memory, core.memory) before queueing it."""

from __future__ import annotations

from core.decode import Size
from core.params import MIN_SIDE, StyleParams


def working_size(content: Size, params: StyleParams) -> Size:
    """(height, width) of the optimisation: the requested box, or the content fitted inside it."""
    if not params.keep_aspect:
        return params.height, params.width
    return _fit(content, (params.height, params.width))


def style_size(style: Size, working: Size, params: StyleParams) -> Size:
    """Style images are stretched to the working size (the seed), scaled by style_scale; with
    keep_aspect they keep their own aspect ratio inside that box."""
    box = (max(MIN_SIDE, round(working[0] * params.style_scale)), max(MIN_SIDE, round(working[1] * params.style_scale)))
    return _fit(style, box) if params.keep_aspect else box


def _fit(size: Size, box: Size) -> Size:
    scale = min(box[0] / size[0], box[1] / size[1])
    return max(MIN_SIDE, round(size[0] * scale)), max(MIN_SIDE, round(size[1] * scale))


def fit_within(size: Size, max_side: int | None) -> Size:
    """`size` scaled down so that its long side is at most `max_side` (never scaled up)."""
    if max_side is None or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))
