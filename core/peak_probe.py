"""The peak memory of short runs at given working sizes: core.calibration's measurement.

On CUDA it runs in the calling process: `max_memory_allocated` over each run, above what was
allocated before it. On the CPU it runs in a fresh process (`python -m core.peak_probe JSON`),
started with MALLOC_MMAP_THRESHOLD_ so that a freed block leaves the resident set at once; a
run's peak is then the rise of the resident set's high-water mark (VmHWM, reset through
/proc/self/clear_refs) over it, as bench/memory.py measures, except that the runs follow one
another in the one child (bench/memory.py starts a process for each): the mmap threshold gives
each run's blocks back as they are freed, so a run starts from the same resident set. Both count
what a job adds to a process whose network is loaded, which is what core.memory estimates.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from core.decode import Size
from core.params import StyleParams
from core.weights import WeightsSource

ITERATIONS = 2  # the second iteration's peak is the steady one (the first allocates the optimiser's state)
# Blocks above this come from mmap and go back on free: each run's peak shows, not one hidden in
# memory malloc kept from the run before.
MMAP_THRESHOLD = 131_072
PROBE_TIMEOUT_SECONDS = 600.0  # only a hang reaches it: a few seconds on any machine


class ProbeError(RuntimeError):
    """The measurement could not be made here (no /proc, the child process failed)."""


def noise_pair(size: Size, seed: int = 0) -> tuple[Image.Image, Image.Image]:
    """A content and a style image of noise at `size` (memory does not depend on the pixels)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[0], size[1], 3), generator=generator, dtype=torch.uint8).numpy()
    return Image.fromarray(pixels), Image.fromarray(pixels[::-1].copy())


def measure_here(runs: Sequence[tuple[Size, bool]], device: torch.device, weights: WeightsSource) -> list[int]:
    """Each run's peak bytes (working size, checkpointing), measured in this process. On the CPU
    only a process started as `probe_in_child` does gives figures worth having."""
    from core.transfer import stylize

    tiny = Image.new("RGB", (32, 32), (120, 130, 140))
    # Loads the network and lets the libraries set themselves up, outside the measurement.
    stylize(
        tiny, [tiny], StyleParams(iterations=ITERATIONS, height=32, width=32, seed=0), device=device, weights=weights
    )
    peaks = []
    for size, checkpointing in runs:
        content, style = noise_pair(size)
        params = StyleParams(iterations=ITERATIONS, height=size[0], width=size[1], seed=0)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # the high-water mark starts again from now
            base = _status_bytes("VmRSS")
        stylize(content, [style], params, device=device, weights=weights, checkpointing=checkpointing)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
        else:
            peaks.append(_status_bytes("VmHWM") - base)
    return peaks


def probe_in_child(runs: Sequence[tuple[Size, bool]], env: dict[str, str] | None = None) -> list[int]:
    """The CPU's peaks, each run in turn in one fresh process with random weights. `env`: the
    engine's variables (NST_PRECISION, NST_CHANNELS_LAST) the child runs with."""
    if not Path("/proc/self/clear_refs").exists():
        raise ProbeError("no /proc/self/clear_refs: the CPU's peaks can only be read on Linux")
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    child_env = {
        **os.environ,
        **(env or {}),
        "PYTHONPATH": path,
        "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD),
        "NST_COMPILE": "0",
        "NST_TEST_FAULTS": "",
    }
    request = json.dumps([[size[0], size[1], checkpointing] for size, checkpointing in runs])
    try:
        done = subprocess.run(
            [sys.executable, "-m", "core.peak_probe", request],
            env=child_env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProbeError(f"the measuring process did not run: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ProbeError(f"the measuring process failed ({done.returncode}): {last}")
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    return [int(peak) for peak in peaks]


def _status_bytes(field: str) -> int:
    found = re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())
    if found is None:
        raise ProbeError(f"/proc/self/status has no {field}")
    return int(found.group(1)) * 1024


def main(argv: Sequence[str]) -> int:
    runs = [((int(h), int(w)), bool(c)) for h, w, c in json.loads(argv[0])]
    peaks = measure_here(runs, torch.device("cpu"), WeightsSource.parse("random"))
    sys.stdout.write(json.dumps(peaks) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
