"""A job's timelapse: its snapshots, in order, as one animated WebP, ending with the result.

Pure image work (Pillow, no I/O): the route (api/routes/timelapse.py) reads the snapshots and the
result and runs `render` in a worker thread. The work is capped whatever the job: at most
MAX_FRAMES frames (snapshots picked evenly, the first and the last always), each at most the
snapshots' size and MAX_SIDE pixels on its long side.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, features

MAX_FRAMES = 100
MAX_SIDE = 512  # a snapshot may be 1024 px: a quarter of the pixels to encode, a hundred times over
FRAME_MS = 120
HOLD_MS = 2000  # the last frame (the result, when there is one) stays this long before the loop
QUALITY = 75


def supported() -> bool:
    """Whether this Pillow writes animated WebP. Pillow 11 and later always can when it has WebP
    (the `webp_anim` feature is gone); earlier ones say so with that feature."""
    if "webp_anim" in features.features:
        return bool(features.check_feature("webp_anim"))
    return bool(features.check_module("webp"))


def pick(iterations: Sequence[int], count: int) -> list[int]:
    """At most `count` of `iterations` (in order), evenly spread, the first and the last kept."""
    if count <= 0:
        return []
    if len(iterations) <= count:
        return list(iterations)
    if count == 1:
        return [iterations[-1]]
    step = (len(iterations) - 1) / (count - 1)
    return [iterations[round(i * step)] for i in range(count)]


def frame_size(width: int, height: int) -> tuple[int, int]:
    """The frames' size: the snapshot's, scaled down (never up) to fit MAX_SIDE."""
    scale = min(1.0, MAX_SIDE / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _frame(data: bytes, size: tuple[int, int] | None) -> Image.Image:
    """One image decoded as RGB at `size` (None: its own size, scaled down to fit MAX_SIDE). A
    JPEG is decoded at the smallest scale that still covers the size (its DCT scaling)."""
    opened = Image.open(io.BytesIO(data))
    if size is None:
        size = frame_size(*opened.size)
    opened.draft("RGB", size)  # JPEG only; a no-op for the result's PNG
    image = opened.convert("RGB")
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def render(snapshots: Sequence[bytes], result: bytes | None) -> tuple[bytes, int]:
    """The animated WebP of `snapshots` (JPEG or any image Pillow reads, in order) then `result`
    (if any), each frame FRAME_MS long and the last HOLD_MS, looping; and its frame count. The
    frames take the first snapshot's size (scaled down to fit MAX_SIDE)."""
    if not snapshots:
        raise ValueError("a timelapse needs at least one snapshot")
    first = _frame(snapshots[0], None)
    frames = [first, *(_frame(data, first.size) for data in snapshots[1:])]
    if result is not None:
        frames.append(_frame(result, first.size))
    durations = [FRAME_MS] * (len(frames) - 1) + [HOLD_MS]
    buffer = io.BytesIO()
    first.save(
        buffer,
        "WEBP",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        quality=QUALITY,
    )
    return buffer.getvalue(), len(frames)
