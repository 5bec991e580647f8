"""A device measured before it serves: memory, speed, bf16 against fp32, compiled against eager.

A worker runs `calibrate` once at start, on its own device, and acts on what it finds (`apply`):
- memory: peaks at two or three small working sizes, plain and with checkpointing, in the
  precision and layout it serves with (core.peak_probe), fitted to core.memory's model; its
  plans and the budget admission checks against then use the fitted constants. The written
  constants stay the fallback where the measurement fails or the fit makes no sense.
- precision: where it would run bf16, a short optimisation in bf16 and in fp32 from the same
  start; it serves fp32 if bf16's losses stray past PRECISION_TOLERANCE.
- compiling: where it would compile, compiled against eager at the speed size; it serves eager
  if compiling fails or is not COMPILE_GAIN faster.
- speed: milliseconds an iteration at the speed size (the default working size) on the path it
  serves with.
Every check says what it decided and why (`Check`), for the log, the heartbeat and `nst doctor`.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from PIL import Image, ImageDraw

from core.batching import BatchPolicy
from core.decode import Size
from core.engine import (
    TEST_FAULTS,
    EngineOptions,
    compile_errors,
    decide,
    options_override,
    retry_failed_compilations,
)
from core.memory import (
    ORIGINAL_BYTES_PER_PIXEL,
    Calibration,
    DeviceType,
    MemoryModel,
    Precision,
    count_bytes,
    describe_bytes,
    written_model,
)
from core.params import MAX_SIDE, MIN_SIDE, StyleParams
from core.peak_probe import ProbeError, measure_here, probe_in_child
from core.weights import WeightsSource

log = logging.getLogger(__name__)

T = TypeVar("T")
What = Literal["memory", "speed", "precision", "compile", "batch"]
CHECKS: tuple[What, ...] = ("memory", "speed", "precision", "compile", "batch")

# bf16 against fp32 from one start: the relative gap of the loss at the first iteration (the same
# image under both objectives) and at the last. bf16 keeps 8 bits of mantissa, so a feature map
# is off by about 0.4% per element; the Grams and losses sum in fp32 and the errors average out:
# this project measured 0.04% on the CPU (docs/benchmarks.md). A broken path (an overflow to inf,
# a wrong kernel) is off by far more than 3%, and 3% is the gap the fast path must keep anyway.
PRECISION_TOLERANCE = 0.03
PRECISION_ITERATIONS = 30
PRECISION_SIDE = 128  # at most: the gap does not depend on the size, the time does
# Compiling costs seconds to minutes per new working size (a job's first at that size): it must
# buy at least 10% an iteration to be worth it, more than the noise of two short timings.
COMPILE_GAIN = 0.9
SPEED_SECONDS = 2.0  # the timed part of a speed measurement, about
MAX_TIMED_ITERATIONS = 200
# A fit far from the counted bytes means the measurement went wrong, not that the model did.
PLAUSIBLE_SCALE = (0.5, 3.0)
MAX_FIT_ERROR = 0.15  # the largest relative miss of the fit at a measured size
# Batching (core.batch) must make an image's iteration at least 10% cheaper: a job that joins a
# batch runs slower itself, and two short timings differ by a few percent anyway.
BATCH_GAIN = 1.1
# Batch sizes tried: one a device, a measurement costing seconds on the CPU, and each new batch
# size being a compilation of its own on CUDA (tens of seconds).
BATCH_CANDIDATES = {False: (4,), True: (8,)}
# Working sides batching is timed at, smallest first, up to the speed size: on the CPU its gain
# falls with the size (1.36x at 64x64, 1.06x at 128x128 on this project's 2-core machine), so
# the ladder finds where it stops paying; on CUDA the speed size itself.
BATCH_SIDES = {False: (64, 128), True: ()}
BATCH_SECONDS = 1.0  # the timed part of one batch measurement, about


@dataclass(frozen=True)
class Check:
    calibrated: bool  # the check ran to its end on this device, whatever it decided
    outcome: str  # one word: measured, written, bf16, fp32, compiled, eager, skipped, failed
    detail: str  # why, in one sentence

    def report(self) -> dict[str, object]:
        return {"calibrated": self.calibrated, "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True)
class PeakPoint:
    size: Size
    checkpointing: bool
    counted: int  # core.memory's count of the tensors
    measured: int  # the peak measured, less the decoded original (not part of the fit)
    original: int  # the decoded original's bytes, beside the network's


@dataclass(frozen=True)
class CalibrationConfig:
    speed_size: Size = (384, 512)  # the default working size: what most jobs run at
    memory_sides: tuple[int, ...] | None = None  # None: by device (SIDES)

    @classmethod
    def parse(cls, speed_size: str, memory_sides: str) -> CalibrationConfig:
        """From the settings' strings: "384x512" and "auto" or "128,192,256"."""
        height, _, width = speed_size.lower().partition("x")
        sides = (height, width)
        if not all(side.isdigit() and MIN_SIDE <= int(side) <= MAX_SIDE for side in sides):
            raise ValueError(f"calibration speed size {speed_size!r}: give HEIGHTxWIDTH, {MIN_SIDE} to {MAX_SIDE} each")
        memory: tuple[int, ...] | None = None
        if memory_sides.strip().lower() != "auto":
            parts = [p.strip() for p in memory_sides.split(",") if p.strip()]
            if len(parts) < 2 or not all(p.isdigit() and 32 <= int(p) <= 4096 for p in parts):
                raise ValueError(
                    f"calibration memory sides {memory_sides!r}: give auto or two or more sides, 32 to 4096"
                )
            memory = tuple(sorted({int(p) for p in parts}))
            if len(memory) < 2:
                raise ValueError(f"calibration memory sides {memory_sides!r}: two different sides at least")
        return cls((int(height), int(width)), memory)

    def sides_for(self, device: torch.device) -> tuple[int, ...]:
        return self.memory_sides or SIDES[device.type == "cuda"]


# Working sides the memory is measured at: small enough to take seconds, far enough apart to fit
# a slope, and past the sizes where fixed costs blur it (below about 192 px the CPU's peak with
# checkpointing is 1.07 to 1.4 times the count, against 0.94 from 320 px up).
SIDES = {False: (192, 256, 320), True: (256, 512, 768)}


@dataclass(frozen=True)
class DeviceCalibration:
    device: str
    precision: Precision  # what the device serves with, after the checks
    compile: bool
    channels_last: bool
    model: MemoryModel
    ms_per_iteration: float | None
    speed_size: Size
    checks: dict[What, Check]
    seconds: float
    peaks: tuple[PeakPoint, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)  # ms/iteration by path (compiled, eager)
    precision_gap: float | None = None
    batch: BatchPolicy | None = None  # how many images batching pays for (None: not measured)

    def report(self) -> dict[str, object]:
        """What a worker's heartbeat adds to its profile."""
        report: dict[str, object] = {
            "compile": self.compile,
            "speed_size": list(self.speed_size),
            "memory_model": self.model.report(),
            "calibration": {what: check.report() for what, check in self.checks.items()},
            "calibration_seconds": round(self.seconds, 2),
        }
        if self.ms_per_iteration is not None:
            report["ms_per_iteration"] = round(self.ms_per_iteration, 3)
        return report

    def apply(self) -> None:
        """Serve with what was decided: core.engine's options for the rest of this process."""
        decide(precision=self.precision, compile=self.compile)


def not_calibrated(device: torch.device, why: str, config: CalibrationConfig | None = None) -> DeviceCalibration:
    """The written constants and the defaults, every check skipped for `why`."""
    options = EngineOptions.for_device(device)
    return DeviceCalibration(
        device=str(device), precision=options.precision, compile=options.compile,
        channels_last=options.channels_last, model=written_model(_device_type(device), options.precision),
        ms_per_iteration=None,
        speed_size=(config or CalibrationConfig()).speed_size,
        checks={what: Check(False, "skipped", why) for what in CHECKS}, seconds=0.0,
    )  # fmt: skip


def calibrate(device: torch.device, weights: WeightsSource, config: CalibrationConfig) -> DeviceCalibration:
    """Measure `device` with the network of `weights` (loaded already, in a worker). Never raises
    for a check that fails: that check falls back and says why. Logs one line a check."""
    start = time.perf_counter()
    options = EngineOptions.for_device(device)
    checks: dict[What, Check] = {}
    precision: Precision = options.precision
    gap: float | None = None
    if options.precision == "bf16":
        checks["precision"], gap = _guarded("precision", "fp32", lambda: _check_precision(device, weights, config))
        precision = "bf16" if checks["precision"].outcome == "bf16" else "fp32"
    else:
        checks["precision"] = Check(False, "skipped", f"serves {options.precision}: nothing to compare")
    with options_override(precision=precision):
        model, peaks = written_model(_device_type(device), precision), list[PeakPoint]()
        checks["memory"], fitted = _guarded(
            "memory", "written", lambda: _check_memory(device, weights, config, options)
        )
        if fitted is not None:
            model, peaks = fitted
        timings: dict[str, float] = {}
        compiled = options.compile
        if options.compile:
            checks["compile"], measured = _guarded("compile", "eager", lambda: _check_compile(device, weights, config))
            timings = measured or {}
            compiled = checks["compile"].outcome == "compiled"
        else:
            checks["compile"] = Check(False, "skipped", "serves eagerly: nothing to compare")
        with options_override(compile=compiled):
            ms = timings.get("compiled" if compiled else "eager")
            if ms is None:
                checks["speed"], ms = _guarded("speed", "failed", lambda: _check_speed(device, weights, config))
            else:
                checks["speed"] = Check(True, "measured", _speed_detail(ms, config, compiled))
            checks["batch"], batch = _guarded("batch", "written", lambda: _check_batch(device, weights, config))
    _release(device)
    result = DeviceCalibration(
        device=str(device), precision=precision, compile=compiled, channels_last=options.channels_last,
        model=model, ms_per_iteration=ms, speed_size=config.speed_size, checks=checks,
        seconds=time.perf_counter() - start, peaks=tuple(peaks), timings=timings, precision_gap=gap, batch=batch,
    )  # fmt: skip
    for what in CHECKS:
        check = checks[what]
        log.info("calibration %s on %s: %s (%s)", what, device, check.outcome, check.detail)
    return result


def _guarded(what: What, fallback: str, check: Callable[[], tuple[Check, T]]) -> tuple[Check, T | None]:
    """A check's result, or `fallback` with the error when the check itself broke."""
    try:
        return check()
    except Exception as exc:  # any failure of a measurement: the device serves the safe way
        log.warning("calibration %s failed: %s: %s", what, type(exc).__name__, exc)
        return Check(False, fallback, f"the check failed ({one_line(exc)}); {_safe(what)}"), None


def one_line(error: BaseException | str, limit: int = 200) -> str:
    """An error as a check's detail carries it: compilers' messages run to pages."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    first = (text.strip().splitlines() or [""])[0]
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _safe(what: What) -> str:
    return {
        "memory": "the written constants stay",
        "speed": "no speed to report",
        "precision": "serving fp32",
        "compile": "serving eagerly",
        "batch": "the written batch policy stays",
    }[what]


# --- precision -------------------------------------------------------------------------------


def test_pair(size: Size) -> tuple[Image.Image, Image.Image]:
    """A content picture (a gradient, a disc and a bar) and a style one (stripes): structure for the
    losses to work on, the same on every machine."""
    height, width = size
    gradient = torch.stack(
        [
            torch.linspace(0, 255, width).expand(height, width),
            torch.linspace(255, 0, height).unsqueeze(1).expand(height, width),
            torch.full((height, width), 96.0),
        ],
        dim=-1,
    )
    content = Image.fromarray(gradient.to(torch.uint8).numpy())
    draw = ImageDraw.Draw(content)
    draw.ellipse((width // 4, height // 4, width * 3 // 4, height * 3 // 4), fill=(230, 200, 40))
    draw.rectangle((0, height * 2 // 3, width, height * 2 // 3 + max(2, height // 16)), fill=(20, 40, 120))
    style = Image.new("RGB", (width, height), (240, 230, 210))
    stripes = ImageDraw.Draw(style)
    for x in range(-height, width, max(4, width // 12)):
        stripes.line((x, 0, x + height, height), fill=(30, 60, 160), width=max(2, width // 40))
    return content, style


def _losses(device: torch.device, weights: WeightsSource, size: Size, precision: Precision) -> tuple[float, float]:
    """The total loss at the first and the last iteration of a short eager run from seed 0."""
    from core.transfer import Progress, stylize

    content, style = test_pair(size)
    params = StyleParams(iterations=PRECISION_ITERATIONS, height=size[0], width=size[1], seed=0)
    seen: dict[int, float] = {}

    def keep(progress: Progress) -> None:
        if progress.iteration in (1, params.iterations):
            seen[progress.iteration] = progress.losses.total

    with options_override(precision=precision, compile=False):
        stylize(content, [style], params, device=device, weights=weights, on_progress=keep, report_every=1)
    first, last = seen[1], seen[params.iterations]
    if precision == "bf16" and "bf16" in TEST_FAULTS:  # a test's stand-in for a broken bf16 path
        first, last = first * 1.5, last * 1.5
    return first, last


def _check_precision(
    device: torch.device, weights: WeightsSource, config: CalibrationConfig
) -> tuple[Check, float | None]:
    size = (min(PRECISION_SIDE, config.speed_size[0]), min(PRECISION_SIDE, config.speed_size[1]))
    fp32 = _losses(device, weights, size, "fp32")
    bf16 = _losses(device, weights, size, "bf16")
    run = f"{PRECISION_ITERATIONS} iterations at {size[0]}x{size[1]}"
    if not all(math.isfinite(v) for v in (*fp32, *bf16)):
        return Check(True, "fp32", f"bf16's loss is not finite over {run}; serving fp32"), None
    gap = max(abs(b - f) / abs(f) if f else abs(b) for f, b in zip(fp32, bf16, strict=True))
    if gap > PRECISION_TOLERANCE:
        detail = f"bf16's loss strays {gap:.2%} from fp32's over {run}, past {PRECISION_TOLERANCE:.0%}; serving fp32"
        return Check(True, "fp32", detail), gap
    return Check(
        True, "bf16", f"bf16's loss within {gap:.3%} of fp32's over {run} (tolerance {PRECISION_TOLERANCE:.0%})"
    ), gap


# --- memory ----------------------------------------------------------------------------------


def _check_memory(
    device: torch.device, weights: WeightsSource, config: CalibrationConfig, options: EngineOptions
) -> tuple[Check, tuple[MemoryModel, list[PeakPoint]]]:
    precision: Precision = EngineOptions.for_device(device).precision
    params = StyleParams()
    sides = config.sides_for(device)
    runs = [((side, side), checkpointing) for checkpointing in (False, True) for side in sides]
    if device.type == "cuda":
        with options_override(compile=False):  # one compile per size would take minutes
            peaks = measure_here(runs, device, weights)
    else:
        env = {"NST_PRECISION": precision, "NST_CHANNELS_LAST": "1" if options.channels_last else "0"}
        peaks = probe_in_child(runs, env)
    points = []
    for (size, checkpointing), peak in zip(runs, peaks, strict=True):
        # The decoded original is in the process's memory on the CPU, the host's on CUDA.
        original = ORIGINAL_BYTES_PER_PIXEL * size[0] * size[1] if device.type == "cpu" else 0
        counted = count_bytes(size, params, precision, checkpointing).total
        points.append(PeakPoint(size, checkpointing, counted, peak - original, original))
    if any(p.measured <= 0 for p in points):
        raise ProbeError(f"a measured peak is not positive ({[p.measured for p in points]}): the measurement is off")
    plain = fit_constants([p for p in points if not p.checkpointing])
    lean = fit_constants([p for p in points if p.checkpointing])
    model = MemoryModel(plain, lean, "measured")
    worst = max(abs(_estimate(model, p) - p.measured) / p.measured for p in points)
    written = written_model(_device_type(device), precision)
    where = f"{precision}, sides {', '.join(map(str, sides))}"
    scales = (plain.scale, lean.scale)
    if not all(PLAUSIBLE_SCALE[0] <= s <= PLAUSIBLE_SCALE[1] for s in scales) or worst > MAX_FIT_ERROR:
        detail = (
            f"the fit ({where}) makes no sense: scales {plain.scale:.3f} and {lean.scale:.3f}, worst miss "
            f"{worst:.1%}; the written constants stay"
        )
        return Check(True, "written", detail), (written, points)
    detail = (
        f"fitted at {where}: plain scale {plain.scale:.3f} + {describe_bytes(plain.fixed)}, checkpointing "
        f"{lean.scale:.3f} + {describe_bytes(lean.fixed)} (written: {written.plain.scale:.3f} + "
        f"{describe_bytes(written.plain.fixed)}, {written.checkpointing.scale:.3f} + "
        f"{describe_bytes(written.checkpointing.fixed)}); worst miss {worst:.1%}"
    )
    return Check(True, "measured", detail), (model, points)


def fit_constants(points: list[PeakPoint]) -> Calibration:
    """Least squares measured = scale * counted + fixed; never a negative fixed part (that would
    underestimate small jobs): then the largest ratio, with none."""
    n = len(points)
    xs, ys = [p.counted for p in points], [p.measured for p in points]
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if n >= 2 and var > 0:
        scale = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
        fixed = mean_y - scale * mean_x
        if fixed >= 0:
            return Calibration(scale=scale, fixed=math.ceil(fixed))
    return Calibration(scale=max(y / x for x, y in zip(xs, ys, strict=True)), fixed=0)


def _estimate(model: MemoryModel, point: PeakPoint) -> float:
    constants = model.constants(point.checkpointing)
    return constants.scale * point.counted + constants.fixed


# --- speed and compiling ---------------------------------------------------------------------


def ms_per_iteration(device: torch.device, weights: WeightsSource, size: Size) -> float:
    """One iteration's time at `size` with the options in force: two runs of different lengths,
    their difference over the iterations between, so the set-up of a run (targets, first-call
    costs) cancels out, after a warm-up run that also compiles where the path compiles."""
    from core.transfer import stylize

    content, style = test_pair(size)

    def seconds(iterations: int) -> float:
        params = StyleParams(iterations=iterations, height=size[0], width=size[1], seed=0)
        begin = time.perf_counter()
        stylize(content, [style], params, device=device, weights=weights)  # returns a host image: synchronised
        return time.perf_counter() - begin

    # Loads the network and picks kernels for this size; compiles and records the CUDA graphs
    # where the path compiles (their second call records).
    seconds(2 if EngineOptions.for_device(device).compile else 1)
    short = seconds(1)  # an upper bound of an iteration: it includes the set-up
    more = max(2, min(MAX_TIMED_ITERATIONS, round(SPEED_SECONDS / max(short, 1e-4))))
    long = seconds(1 + more)
    if long <= short:  # a busy machine slowed the short run: the long run's mean, set-up and all
        return long / (1 + more) * 1000
    return (long - short) / more * 1000


def _speed_detail(ms: float, config: CalibrationConfig, compiled: bool) -> str:
    size = config.speed_size
    return f"{ms:.1f} ms an iteration at {size[0]}x{size[1]}, {'compiled' if compiled else 'eager'}"


def _check_speed(device: torch.device, weights: WeightsSource, config: CalibrationConfig) -> tuple[Check, float]:
    ms = ms_per_iteration(device, weights, config.speed_size)
    compiled = EngineOptions.for_device(device).compile
    return Check(True, "measured", _speed_detail(ms, config, compiled)), ms


def _check_compile(
    device: torch.device, weights: WeightsSource, config: CalibrationConfig
) -> tuple[Check, dict[str, float]]:
    retry_failed_compilations()  # one that failed in the warm-up must fail here too, to be seen
    errors_before = len(compile_errors)
    with options_override(compile=True):
        compiled = ms_per_iteration(device, weights, config.speed_size)
    failed = compile_errors[errors_before:]
    with options_override(compile=False):
        eager = ms_per_iteration(device, weights, config.speed_size)
    timings = {"eager": eager} if failed else {"compiled": compiled, "eager": eager}
    if failed:
        return Check(
            True, "eager", f"compiling failed ({one_line(failed[0])}); serving eagerly at {eager:.1f} ms"
        ), timings
    versus = f"compiled {compiled:.2f} ms an iteration against eager {eager:.2f} ms"
    if compiled > COMPILE_GAIN * eager:
        return Check(True, "eager", f"{versus}: not {1 - COMPILE_GAIN:.0%} faster; serving eagerly"), timings
    return Check(True, "compiled", f"{versus} ({eager / compiled:.2f}x)"), timings


# --- batching --------------------------------------------------------------------------------


def batch_ms_per_image(device: torch.device, weights: WeightsSource, size: Size, batch: int) -> float:
    """An image's share of one iteration when `batch` images run together at `size` on the path
    served (core.batch): two runs of different lengths, as ms_per_iteration, over the images."""
    from core.batch import BatchedRun, batch_member

    content, style = test_pair(size)

    def seconds(iterations: int) -> float:
        run = BatchedRun()
        for seed in range(batch):
            params = StyleParams(iterations=iterations, height=size[0], width=size[1], seed=seed)
            run.add(batch_member(content, [style], params, device=device, weights=weights))
        begin = time.perf_counter()
        while len(run):
            run.step()  # the results are host images: synchronised
        return time.perf_counter() - begin

    seconds(2 if EngineOptions.for_device(device).compile else 1)  # kernels picked, graphs recorded
    short = seconds(1)
    more = max(2, min(MAX_TIMED_ITERATIONS, round(BATCH_SECONDS / max(short, 1e-4))))
    long = seconds(1 + more)
    per_iteration = long / (1 + more) if long <= short else (long - short) / more
    return per_iteration / batch * 1000


def _check_batch(device: torch.device, weights: WeightsSource, config: CalibrationConfig) -> tuple[Check, BatchPolicy]:
    """How many images to batch, and up to which size: the candidate that makes an image's
    iteration cheapest at the smallest size, if by BATCH_GAIN; then up the sizes while it pays."""
    cuda = device.type == "cuda"
    limit = config.speed_size[0] * config.speed_size[1]
    sizes = [(side, side) for side in BATCH_SIDES[cuda] if side * side <= limit] or [config.speed_size]
    first = sizes[0]
    alone = batch_ms_per_image(device, weights, first, 1)
    gains = {b: alone / batch_ms_per_image(device, weights, first, b) for b in BATCH_CANDIDATES[cuda]}
    best = max(gains, key=lambda b: gains[b])
    at = f"{first[0]}x{first[1]}"
    if gains[best] < BATCH_GAIN:
        detail = f"a batch of {best} at {at} is {gains[best]:.2f}x an image alone: not {BATCH_GAIN - 1:.0%} faster"
        return Check(True, "alone", detail), BatchPolicy(1, None, "measured", detail)
    paid, gain = first, gains[best]
    for size in sizes[1:]:
        here = batch_ms_per_image(device, weights, size, 1) / batch_ms_per_image(device, weights, size, best)
        if here < BATCH_GAIN:
            break
        paid, gain = size, here
    max_pixels = None if paid[0] * paid[1] >= limit else paid[0] * paid[1]
    upto = "at every size" if max_pixels is None else f"up to {paid[0]}x{paid[1]}"
    detail = f"batches of {best} {upto}: {gain:.2f}x faster an image at {paid[0]}x{paid[1]}"
    return Check(True, "batched", detail), BatchPolicy(best, max_pixels, "measured", detail)


def _device_type(device: torch.device) -> DeviceType:
    return "cuda" if device.type == "cuda" else "cpu"


def _release(device: torch.device) -> None:
    """Give back what the measurements cached, so the budget measured next sees the device free."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
