"""Loading the network, and compiling the default size, before the first job takes its time."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def warm_up(device: str | None, size: tuple[int, int] | None = None) -> str:
    """Load the weights; where the engine compiles (CUDA), run two iterations at `size` (the
    calibration's speed size; default: the default working size) so its graph is compiled and
    captured now. Returns the weights label."""
    from PIL import Image

    from core.device import resolve_device
    from core.engine import EngineOptions
    from core.params import StyleParams
    from core.transfer import stylize
    from core.weights import WeightsSource

    start = time.perf_counter()
    source = WeightsSource.from_env()
    run_device = resolve_device(device)
    options = EngineOptions.for_device(run_device)
    defaults = StyleParams()
    if options.compile:
        height, width = size or (defaults.height, defaults.width)
        params = StyleParams(iterations=2, height=height, width=width, seed=0)  # the seed's layers and weights
    else:
        params = StyleParams(iterations=1, height=16, width=16, seed=0)
    image = Image.new("RGB", (params.width, params.height), (128, 128, 128))
    stylize(image, [image], params, device=run_device, weights=source)
    if options.compile:
        # A job that may share a batch runs through core.batch's loss, a graph of its own: one image.
        from core.batch import BatchedRun, batch_member

        batch = BatchedRun()
        batch.add(batch_member(image, [image], params, device=run_device, weights=source))
        while len(batch):
            batch.step()
    log.info(
        "weights %s loaded and %s warmed on %s in %.1f s",
        source.label, f"{params.height}x{params.width}", run_device, time.perf_counter() - start,
    )  # fmt: skip
    return source.label
