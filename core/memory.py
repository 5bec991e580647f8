"""How much memory a job needs at its peak, and how much a worker may give it.

The model counts, layer by layer, the tensors that the backward pass keeps and the largest
working set it needs on top (core.vgg's forward, with and without activation checkpointing),
in the bytes of the job's precision. Two fitted constants per device type turn that count into
a measured peak: a scale (the allocator's rounding and the copies autograd makes that the count
leaves out) and a fixed part. `bench/memory.py` measures peaks at several sizes, fits them and
prints estimate against measurement; the constants below come from its last run (see
docs/benchmarks.md). Pure Python: the API estimates a job without importing torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from core.decode import Size
from core.layers import CONV_CHANNELS, CONV_INDICES, CONVS_PER_BLOCK, layer_index
from core.params import StyleParams
from core.scales import plan_stages
from core.sizes import working_size

Precision = Literal["fp32", "bf16"]
DeviceType = Literal["cpu", "cuda"]

BUDGET_SHARE = 0.85  # of the free memory, the rest left to the allocator's slack and other users
# Decoded inputs and the rendered output at the content's original size (RGB bytes plus the
# float copies made while converting): not fitted, small beside the network's maps.
ORIGINAL_BYTES_PER_PIXEL = 16


@dataclass(frozen=True)
class Calibration:
    scale: float  # measured peak / counted bytes
    fixed: int  # bytes a job takes whatever its size


# Written constants: the starting point, and what a worker uses until (or unless) it calibrates
# its own device at start (core.calibration), which replaces them with a fit of its own peaks.
# The CPU's were fitted by bench/memory.py on the development machine (torch 2.14.1, fp32, peaks
# of the resident set at 128 to 512 px; bf16 on a CPU takes them too). CUDA's by a worker's
# calibration on an NVIDIA H200 (torch 2.11.0+cu130, channels_last, eager, max_memory_allocated
# at 256 to 768 px), in bf16 (the default) and in fp32, whose scales differ by up to a fifth; the
# bf16 fit predicted bench/memory.py's peaks at 1024 and 2048 px within 0.2% (docs/benchmarks.md).
# Before that measurement CUDA took the CPU's scales and 256 MB: 15% short at 2048 px with
# checkpointing.
CALIBRATION: dict[tuple[DeviceType, Precision, bool], Calibration] = {
    ("cpu", "fp32", False): Calibration(scale=0.989, fixed=4_900_000),
    ("cpu", "fp32", True): Calibration(scale=0.910, fixed=11_000_000),
    ("cpu", "bf16", False): Calibration(scale=0.989, fixed=4_900_000),
    ("cpu", "bf16", True): Calibration(scale=0.910, fixed=11_000_000),
    ("cuda", "bf16", False): Calibration(scale=0.923, fixed=31_900_000),
    ("cuda", "bf16", True): Calibration(scale=1.128, fixed=3_500_000),
    ("cuda", "fp32", False): Calibration(scale=0.995, fixed=3_400_000),
    ("cuda", "fp32", True): Calibration(scale=0.921, fixed=2_900_000),
}


@dataclass(frozen=True)
class MemoryModel:
    """The constants one device's estimates use, plain and with checkpointing; `source` says
    whether they were "measured" on that device or are the "written" ones above."""

    plain: Calibration
    checkpointing: Calibration
    source: Literal["measured", "written"] = "written"

    def constants(self, checkpointing: bool) -> Calibration:
        return self.checkpointing if checkpointing else self.plain

    def report(self) -> dict[str, object]:
        """As a worker's heartbeat carries it (and from_report reads it back)."""
        return {
            "plain": {"scale": self.plain.scale, "fixed": self.plain.fixed},
            "checkpointing": {"scale": self.checkpointing.scale, "fixed": self.checkpointing.fixed},
            "source": self.source,
        }

    @classmethod
    def from_report(cls, data: object) -> MemoryModel | None:
        """The model a heartbeat reported; None for anything malformed or implausible."""
        if not isinstance(data, dict):
            return None
        parts: list[Calibration] = []
        for name in ("plain", "checkpointing"):
            part = data.get(name)
            if not isinstance(part, dict):
                return None
            scale, fixed = part.get("scale"), part.get("fixed")
            if not isinstance(scale, int | float) or isinstance(scale, bool) or not isinstance(fixed, int):
                return None
            if not (0.1 <= scale <= 10.0) or not (0 <= fixed <= 1 << 40):  # a scale far from 1 is a broken fit
                return None
            parts.append(Calibration(float(scale), fixed))
        return cls(parts[0], parts[1], "measured" if data.get("source") == "measured" else "written")


def written_model(device_type: DeviceType, precision: Precision = "fp32") -> MemoryModel:
    """The written constants for a device type and precision."""
    plain, lean = CALIBRATION[(device_type, precision, False)], CALIBRATION[(device_type, precision, True)]
    return MemoryModel(plain, lean, "written")


@dataclass(frozen=True)
class Counted:
    """Bytes the backward pass keeps (`kept`) and the largest working set on top (`working`)."""

    kept: int
    working: int

    @property
    def total(self) -> int:
        return self.kept + self.working


@dataclass(frozen=True)
class _Map:
    index: int  # torchvision features index of the module that made it
    kind: Literal["conv", "relu", "pool"]
    elements: int


def _maps(size: Size, depth: int) -> list[_Map]:
    """Every feature map of VGG-19's first `depth` modules for an image of `size`."""
    height, width = size
    maps: list[_Map] = []
    index = 0
    channels = iter(CONV_CHANNELS)
    for convs in CONVS_PER_BLOCK:
        for _ in range(convs):
            c = next(channels)
            for kind in ("conv", "relu"):
                if index < depth:
                    maps.append(_Map(index, kind, c * height * width))
                index += 1
        height, width = height // 2, width // 2
        if index < depth:
            maps.append(_Map(index, "pool", c * height * width))
        index += 1
    return maps


def count_bytes(size: Size, params: StyleParams, precision: Precision, checkpointing: bool) -> Counted:
    """The tensors of one iteration at working `size`, counted from the network's shapes."""
    layers = [*params.content_layers, *params.style_layers]
    taps = {layer_index(name) for name in layers}
    depth = max(taps) + 1
    maps = _maps(size, depth)
    feature = 2 if precision == "bf16" else 4  # bytes of a map under autocast, or in fp32
    pixels = size[0] * size[1]
    image_state = optimiser_images(params) * 3 * pixels * 4
    content_targets = sum(m.elements * 4 for m in maps if m.index in {layer_index(n) for n in params.content_layers})
    # A loss reads its map in fp32: under bf16 that is a copy the Gram's product keeps.
    loss_copies = sum(m.elements * 4 for m in maps if m.index in taps) if precision == "bf16" else 0
    image_state += w2_bytes(params)
    largest = max(m.elements for m in maps) * feature
    max_pool = params.pooling == "max"
    if not checkpointing:
        # A convolution keeps its input (the last ReLU's or pool's output), a ReLU its output, max
        # pooling its indices; a convolution's own output is freed unless a loss reads it.
        kept_maps = sum(m.elements * feature for m in maps if m.kind != "conv" or m.index in taps)
        indices = sum(m.elements * 8 for m in maps if m.kind == "pool") if max_pool else 0
        kept = image_state + content_targets + kept_maps + indices + loss_copies
        # Backward: the gradients of a ReLU's output and of its convolution's, beside the stored.
        return Counted(kept=kept, working=2 * largest)
    # Checkpointed: only each segment's output survives the forward pass (the maps the losses
    # read and the pools' outputs); a segment's inside is made again during its backward, and
    # the losses' fp32 copies too.
    boundaries = sorted({*taps, *(m.index for m in maps if m.kind == "pool")})
    kept = image_state + content_targets + sum(m.elements * feature for m in maps if m.index in boundaries)
    working = 0
    start = 0
    for end in boundaries:
        inside = [m for m in maps if start <= m.index < end]
        if inside:
            recomputed = sum(m.elements * feature for m in inside if m.kind != "conv")
            working = max(working, recomputed + 2 * max(m.elements for m in inside) * feature)
        start = end + 1
    copies = max((m.elements * 4 for m in maps if m.index in taps), default=0) if precision == "bf16" else 0
    return Counted(kept=kept, working=max(working, 2 * largest) + copies)


def optimiser_images(params: StyleParams) -> int:
    """Image-sized fp32 tensors beside the network's: the image, its gradient, the best image and
    the content image, plus Adam's two moments, or L-BFGS's history (two vectors a step, one
    more of each while it turns over) and its direction, last gradient and working vector; and
    with `average` the average and its bias-corrected copy."""
    count = 4
    count += 2 * (params.lbfgs_history + 1) + 3 if params.optimizer == "lbfgs" else 2
    return count + (2 if params.average is not None else 0)


# Newton-Schulz keeps three C x C matrices an iteration for the backward pass, for the loss's
# square root; the targets and the loss's own products add about ten more.
W2_MATRICES_PER_LAYER = 3 * 12 + 10


def w2_bytes(params: StyleParams) -> int:
    """The W2 loss's matrices, fp32 (none for the Gram loss, whose Grams the maps dwarf)."""
    if params.style_loss != "w2":
        return 0
    return sum(W2_MATRICES_PER_LAYER * layer_channels(name) ** 2 * 4 for name in params.style_layers)


def layer_channels(name: str) -> int:
    """Channels of a layer's map: those of its convolution (a ReLU's, the one before it)."""
    index = layer_index(name)
    return CONV_CHANNELS[max(i for i, conv in enumerate(CONV_INDICES) if conv <= index)]


@dataclass(frozen=True)
class MemoryEstimate:
    bytes: int
    checkpointing: bool


def estimate_bytes(
    size: Size,
    params: StyleParams,
    *,
    device_type: DeviceType = "cpu",
    precision: Precision = "fp32",
    checkpointing: bool = False,
    original: Size | None = None,
    sizes: Sequence[Size] = (),
    model: MemoryModel | None = None,
) -> int:
    """A job's peak memory in bytes at working `size` (the largest of its scales).

    `original` is the content's own size (its decoded pixels and the rendered output); `sizes`
    other working sizes the job runs at (coarse-to-fine), whose peak comes and goes before the
    last one's. `model`: the device's own constants (a calibrated worker's), else the written ones.
    """
    calibration = (model or written_model(device_type, precision)).constants(checkpointing)
    peak = max(count_bytes(s, params, precision, checkpointing).total for s in (size, *sizes))
    extra = ORIGINAL_BYTES_PER_PIXEL * original[0] * original[1] if original else 0
    return math.ceil(calibration.scale * peak) + calibration.fixed + extra


def plan(
    size: Size,
    params: StyleParams,
    budget: int,
    *,
    device_type: DeviceType = "cpu",
    precision: Precision = "fp32",
    original: Size | None = None,
    sizes: Sequence[Size] = (),
    model: MemoryModel | None = None,
) -> MemoryEstimate:
    """How a job runs within `budget` bytes: plainly if it fits, else with checkpointing. The
    estimate returned is the cheapest one tried; the caller compares it with the budget."""
    plain = estimate_bytes(
        size, params, device_type=device_type, precision=precision, original=original, sizes=sizes, model=model
    )
    if plain <= budget:
        return MemoryEstimate(plain, checkpointing=False)
    lean = estimate_bytes(
        size, params, device_type=device_type, precision=precision, checkpointing=True, original=original,
        sizes=sizes, model=model,
    )  # fmt: skip
    return MemoryEstimate(lean, checkpointing=True)


def batch_bytes(estimates: Sequence[int], fixed: int) -> int:
    """The peak of a batch whose images alone would need `estimates`: the network and the
    runtime (`fixed`, from the same constants) are there once, the rest once per image."""
    return fixed + sum(estimate - fixed for estimate in estimates)


class JobTooBig(ValueError):
    """The job needs more than the budget even with checkpointing; `str()` says so to its client."""

    def __init__(self, size: Size, needed: int, budget: int, whose: str) -> None:
        super().__init__(too_big_detail(size, needed, budget, whose))
        self.size, self.needed, self.budget = size, needed, budget


def fit_job(
    params: StyleParams,
    original: Size,
    budget: int,
    *,
    device_type: DeviceType,
    precision: Precision,
    whose: str = "the memory budget",
    model: MemoryModel | None = None,
) -> MemoryEstimate:
    """The one decision of whether and how a job fits a memory budget, made alike by admission
    (for each live worker), the worker that takes the job and `nst stylize`: its working size, the
    stages of a coarse-to-fine run, a plain run if that fits and checkpointing if not. JobTooBig
    (naming `whose` budget) if even that does not fit; ValueError if its scales do not fit its size.
    `model`: the device's calibrated constants, else the written ones."""
    size = working_size(original, params)
    stages = plan_stages(params, size)
    estimate = plan(
        size, params, budget, device_type=device_type, precision=precision, original=original,
        sizes=[stage.size for stage in stages[:-1]], model=model,
    )  # fmt: skip
    if estimate.bytes > budget:
        raise JobTooBig(size, estimate.bytes, budget, whose)
    return estimate


def too_big_detail(size: Size, needed: int, budget: int, whose: str) -> str:
    """The one message for a job no worker can hold, at submit and on a worker alike."""
    return (
        f"a {size[0]}x{size[1]} working size needs about {describe_bytes(needed)} of memory even with "
        f"activation checkpointing, more than {whose} of {describe_bytes(budget)}; "
        "ask for a smaller height and width"
    )


def default_budget(device: str | None = None) -> int:
    """85% of what the device has free now: the GPU's free memory, or on the CPU the memory
    available to this process (its cgroup's limit if it has one)."""
    import torch

    from core.device import resolve_device

    resolved = resolve_device(device)
    if resolved.type == "cuda":
        free, _ = torch.cuda.mem_get_info(resolved)
        return int(BUDGET_SHARE * free)
    return int(BUDGET_SHARE * available_cpu_bytes())


def describe_bytes(value: float) -> str:
    """1.5 GB, 310 MB: decimal units, as people read them."""
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= factor:
            return f"{value / factor:.3g} {unit}"
    return f"{int(value)} B"


def available_cpu_bytes() -> int:
    """Memory this process may still take: the system's MemAvailable, or less where a cgroup
    (a container's limit) caps it."""
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def meminfo_bytes(field: str) -> int | None:
    """A figure of /proc/meminfo (MemTotal, MemAvailable) in bytes; None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _meminfo_available() -> int:
    available = meminfo_bytes("MemAvailable")
    if available is not None:
        return available
    pages = os.sysconf("SC_AVPHYS_PAGES") if hasattr(os, "sysconf") else 0
    return int(pages * os.sysconf("SC_PAGE_SIZE")) if pages else 0


def _cgroup_room() -> int | None:
    """cgroup v2: memory.max minus memory.current of this process's group; v1: the same from
    memory.limit_in_bytes and memory.usage_in_bytes. None when there is no limit."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        if controllers == "":
            group = Path("/sys/fs/cgroup") / path.lstrip("/")
            room = _room(group / "memory.max", group / "memory.current")
        elif "memory" in controllers.split(","):
            group = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            room = _room(group / "memory.limit_in_bytes", group / "memory.usage_in_bytes")
        else:
            continue
        if room is not None:
            return room
    return None


def _room(limit_file: Path, usage_file: Path) -> int | None:
    try:
        limit = limit_file.read_text().strip()
        usage = int(usage_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
        return None
    return max(0, int(limit) - usage)
