"""The memory model against measured peaks, and what coarse-to-fine and checkpointing buy.

    python bench/memory.py                      # measure, fit, print estimate vs measurement
    python bench/memory.py --sizes 128,256      # fewer sizes
    python bench/memory.py --big 2048           # a 2048x2048 job within a 10 GB budget

Each peak is measured in a fresh process, after the weights are loaded and one tiny job has
run (so the libraries' own set-up is not counted): on the CPU the rise of the resident set's
high-water mark (VmHWM, reset through /proc/self/clear_refs); on CUDA the allocator's own
`max_memory_allocated`. Random weights: the memory does not depend on their values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.memory import (  # noqa: E402
    CALIBRATION,
    ORIGINAL_BYTES_PER_PIXEL,
    count_bytes,
    describe_bytes,
    estimate_bytes,
    plan,
)
from core.params import StyleParams  # noqa: E402

CHILD = r"""
import json, re, sys, gc
import torch
from PIL import Image
from core.transfer import stylize
from core.params import StyleParams
from core.weights import WeightsSource

def hwm():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

def rss():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

height, width, checkpointing, device = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
source = WeightsSource.parse("random")
tiny = Image.new("RGB", (32, 32), (120, 130, 140))
stylize(tiny, [tiny], StyleParams(iterations=2, height=32, width=32, seed=0), device=device, weights=source)
generator = torch.Generator().manual_seed(0)
pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
content = Image.fromarray(pixels)
style = Image.fromarray(pixels[::-1].copy())
params = StyleParams(iterations=2, height=height, width=width, seed=0)
gc.collect()
if device == "cuda":
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
else:
    open("/proc/self/clear_refs", "w").write("5")
    base = rss()
stylize(content, [style], params, device=device, weights=source, checkpointing=checkpointing)
if device == "cuda":
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
else:
    peak = hwm() - base
print(json.dumps({"peak": peak}))
"""


def measure(size: tuple[int, int], checkpointing: bool, device: str) -> int:
    # Large blocks from mmap, so that a freed block leaves the resident set and the next job's
    # peak is not hidden inside memory malloc kept from the last one.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "MALLOC_MMAP_THRESHOLD_": "131072"}
    args = [sys.executable, "-c", CHILD, str(size[0]), str(size[1]), "1" if checkpointing else "0", device]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True, cwd=ROOT)
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak"])


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares measured = scale * counted + fixed."""
    n = len(points)
    mean_x = sum(p[0] for p in points) / n
    mean_y = sum(p[1] for p in points) / n
    var = sum((p[0] - mean_x) ** 2 for p in points)
    if n < 2 or var == 0:
        return mean_y / mean_x, 0.0
    scale = sum((p[0] - mean_x) * (p[1] - mean_y) for p in points) / var
    return scale, mean_y - scale * mean_x


def model_table(sizes: list[int], device: str) -> None:
    import torch

    device_type = "cuda" if device == "cuda" else "cpu"
    precision = "bf16" if device == "cuda" and os.environ.get("NST_PRECISION", "auto") != "fp32" else "fp32"
    params = StyleParams()
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"# memory model vs measured peak ({name}, torch {torch.__version__}, {precision}, 2 iterations)")
    for checkpointing in (False, True):
        rows = []
        for side in sizes:
            size = (side, side)
            counted = count_bytes(size, params, precision, checkpointing).total
            extra = ORIGINAL_BYTES_PER_PIXEL * side * side
            measured = measure(size, checkpointing, device)
            rows.append((size, counted, extra, measured))
        scale, fixed = fit([(c, m - e) for _, c, e, m in rows])
        mode = "checkpointed" if checkpointing else "plain"
        current = CALIBRATION[(device_type, precision, checkpointing)]
        print(f"\n## {mode}: fitted scale {scale:.3f}, fixed {fixed / 1e6:.1f} MB "
              f"(in use: scale {current.scale:.3f}, fixed {current.fixed / 1e6:.1f} MB)")  # fmt: skip
        print(f"{'size':>11} {'measured':>10} {'estimate':>10} {'error':>7} {'refit':>10} {'error':>7}")
        for size, counted, extra, measured in rows:
            estimate = estimate_bytes(
                size, params, device_type=device_type, precision=precision, checkpointing=checkpointing, original=size
            )
            refit = scale * counted + fixed + extra
            error, refit_error = (estimate - measured) / measured, (refit - measured) / measured
            print(
                f"{size[0]:>5}x{size[1]:<5} {describe_bytes(measured):>10} {describe_bytes(estimate):>10} "
                f"{error:>+7.1%} {describe_bytes(refit):>10} {refit_error:>+7.1%}"
            )


def proc_status_bytes(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in bytes."""
    import re

    found = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    assert found is not None, field
    return int(found.group(1)) * 1024


def mean_interval(stamps: list[float]) -> float:
    """Seconds between consecutive time stamps, on average (nan for fewer than two)."""
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")


def timed_stylize(
    content: Any, style: Any, params: StyleParams, source: Any, checkpointing: bool, on_progress: Any
) -> tuple[Any, float]:
    """One run from a reset high-water mark (clear_refs 5), reported at every iteration; (result, seconds)."""
    from core.transfer import stylize

    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    result = stylize(
        content, [style], params, weights=source, checkpointing=checkpointing, on_progress=on_progress, report_every=1
    )
    return result, time.perf_counter() - start


def big_job(side: int, budget: int, stage_iterations: int) -> None:
    """A side x side job within `budget`: coarse-to-fine against one scale, peak per stage."""
    import torch
    from PIL import Image

    from core.scales import plan_stages
    from core.transfer import Progress, stylize
    from core.weights import WeightsSource

    def hwm() -> int:
        return proc_status_bytes("VmHWM")

    def rss() -> int:
        return proc_status_bytes("VmRSS")

    source = WeightsSource.parse("random")
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (side, side, 3), generator=generator, dtype=torch.uint8).numpy()
    content, style = Image.fromarray(pixels), Image.fromarray(pixels[::-1].copy())
    sides = [side // 4, side // 2, side]
    schedule = [{"size": s, "iterations": stage_iterations} for s in sides]
    coarse = StyleParams(height=side, width=side, scales=schedule, seed=0, snapshot_every=10_000)
    single = StyleParams(height=side, width=side, iterations=coarse.iterations, seed=0, snapshot_every=10_000)
    decision = plan((side, side), single, budget, original=(side, side))
    print(f"# a {side}x{side} job, budget {describe_bytes(budget)} (CPU, {os.cpu_count()} cores, fp32)")
    print(f"plain estimate {describe_bytes(estimate_bytes((side, side), single, original=(side, side)))}; "
          f"plan: checkpointing={decision.checkpointing}, estimate {describe_bytes(decision.bytes)}")  # fmt: skip
    tiny = Image.new("RGB", (32, 32), (120, 130, 140))
    stylize(tiny, [tiny], StyleParams(iterations=1, height=32, width=32, seed=0), weights=source)

    peaks: dict[int, int] = {}
    reports: dict[int, list[float]] = {}  # stage -> when each of its iterations was reported
    state = {"base": rss()}

    def on_progress(progress: Progress) -> None:
        peaks[progress.stage] = max(peaks.get(progress.stage, 0), hwm() - state["base"])
        reports.setdefault(progress.stage, []).append(time.perf_counter())

    def per_iteration(stage: int) -> float:
        return mean_interval(reports.get(stage, []))

    result, coarse_time = timed_stylize(content, style, coarse, source, decision.checkpointing, on_progress)
    print(f"\n## coarse-to-fine {schedule}: {coarse_time:.1f} s, {result.iterations_run} iterations")
    print(f"{'stage':>5} {'size':>11} {'peak (rise of RSS)':>19} {'estimate':>10} {'s/iteration':>12}")
    for index, stage in enumerate(plan_stages(coarse, (side, side)), start=1):
        estimate = estimate_bytes(stage.size, single, checkpointing=decision.checkpointing, original=(side, side))
        print(f"{index:>5} {stage.size[0]:>5}x{stage.size[1]:<5} {describe_bytes(peaks.get(index, 0)):>19} "
              f"{describe_bytes(estimate):>10} {per_iteration(index):>12.1f}")  # fmt: skip
    state.update(base=rss())
    peaks.clear()
    reports.clear()
    _, single_time = timed_stylize(content, style, single, source, decision.checkpointing, on_progress)
    print(f"\n## one scale, {single.iterations} iterations at {side}x{side}: {single_time:.1f} s, "
          f"peak {describe_bytes(peaks.get(1, 0))}, {per_iteration(1):.1f} s/iteration")  # fmt: skip
    largest = describe_bytes(max(peaks.values(), default=0))
    print(f"coarse-to-fine takes {coarse_time / single_time:.2f}x the time of one scale; "
          f"largest peak {largest}, budget {describe_bytes(budget)}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="128,192,256,384,512", help="square working sides to measure")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--big", type=int, default=0, help="also run a job this large within --budget")
    parser.add_argument("--budget", type=float, default=10e9, help="bytes, for --big")
    parser.add_argument("--stage-iterations", type=int, default=2, help="iterations per stage, for --big")
    args = parser.parse_args()
    if args.sizes:
        model_table([int(s) for s in args.sizes.split(",")], args.device)
    if args.big:
        print()
        big_job(args.big, int(args.budget), args.stage_iterations)


if __name__ == "__main__":
    main()
