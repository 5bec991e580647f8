"""Which jobs may share one batched optimisation (core.batch), and how many at once.

Images in one batch pass through the network together, so they must need the same network pass:
the same working size, layers and layer weights, pooling and style loss, and an elementwise
optimiser (Adam; L-BFGS's history couples a step to the whole image). Everything else is per
job: alpha, beta, tv weight, learning rate, seed, init, styles, style scale, colour handling,
averaging, iterations and snapshots. A coarse-to-fine job (more than one stage) runs alone.
Precision, memory layout and checkpointing are the worker's, the same for all it runs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from core.decode import Size
from core.params import StyleParams
from core.scales import plan_stages
from core.sizes import working_size


def batch_key(params: StyleParams, original: Size) -> str | None:
    """A short string equal for two jobs exactly when they can share a batch; None for a job
    that always runs alone. `original` is the content image's (height, width)."""
    if params.optimizer != "adam":
        return None
    try:
        size = working_size(original, params)
        if len(plan_stages(params, size)) != 1:
            return None
    except ValueError:  # its scales do not fit: the worker says so when it runs the job
        return None
    network = {
        "size": list(size),
        "content_layers": params.content_layers,
        "content_layer_weights": params.content_layer_weights,
        "style_layers": params.style_layers,
        "style_layer_weights": params.style_layer_weights,
        "pooling": params.pooling,
        "style_loss": params.style_loss,
    }
    digest = hashlib.sha256(json.dumps(network, sort_keys=True).encode()).hexdigest()[:16]
    return f"{size[0]}x{size[1]}-{digest}"


@dataclass(frozen=True)
class BatchPolicy:
    """How many images a worker batches: up to `max_batch` for working sizes of at most
    `max_pixels` (None: any size), within its memory budget; 1 means it never batches."""

    max_batch: int
    max_pixels: int | None
    source: str  # "measured" (core.calibration), "written" (below) or "setting" (NST_MAX_BATCH)
    detail: str = ""

    def limit(self, size: Size) -> int:
        """The most images a batch at working `size` may hold (memory apart)."""
        if self.max_pixels is not None and size[0] * size[1] > self.max_pixels:
            return 1
        return self.max_batch

    def report(self) -> dict[str, object]:
        return {"max_batch": self.max_batch, "max_pixels": self.max_pixels, "source": self.source}


# Without a measurement. CUDA: on an H100 (compiled bf16) a batch of 8 at 384x512 took 1.07 ms an
# image-iteration against 1.65 ms alone. This project's 2-core CPU: 4 at 64x64 gave 1.36x, at
# 128x128 1.06x (not worth a job's wait), at 256x256 nothing.
WRITTEN: dict[str, BatchPolicy] = {
    "cuda": BatchPolicy(8, None, "written", "an H100 batched 8 at 384x512 1.54x faster per image"),
    "cpu": BatchPolicy(4, 96 * 96, "written", "a 2-core CPU batched 4 at 64x64 1.36x faster, at 128x128 1.06x"),
}


def written_policy(device_type: str) -> BatchPolicy:
    return WRITTEN["cuda" if device_type == "cuda" else "cpu"]


def setting_policy(max_batch: int) -> BatchPolicy:
    """NST_MAX_BATCH: the operator's number, at every size."""
    return BatchPolicy(max_batch, None, "setting", f"NST_MAX_BATCH={max_batch}")


def key_size(key: str) -> Size:
    """The working size a batch key names ("HxW-...")."""
    height, width = key.split("-", 1)[0].split("x")
    return int(height), int(width)
