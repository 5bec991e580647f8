"""Loading the network before the first job, so that job does not pay for it."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


def warm_up(device: str | None) -> str:
    """Load the weights and run one tiny iteration on `device`; returns the weights label."""
    from PIL import Image

    from core.params import StyleParams
    from core.transfer import stylize
    from core.weights import WeightsSource

    start = time.perf_counter()
    source = WeightsSource.from_env()
    tiny = Image.new("RGB", (16, 16), (128, 128, 128))
    stylize(tiny, [tiny], StyleParams(iterations=1, height=16, width=16, seed=0), device=device, weights=source)
    log.info("weights %s loaded and warmed in %.1f s", source.label, time.perf_counter() - start)
    return source.label
