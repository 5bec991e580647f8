"""Time one style iteration two ways in one run: the seed's plain loop and core's engine.

    python bench/speed.py --device cpu --height 128 --width 128 --iterations 20

The reference is the seed's loop as the seed runs it (core/reference.py): two forward passes an
iteration (one to the content layer, one to the deepest style layer), fp32, explicit input
normalisation, and the best image chosen on the host after every iteration. The engine is
`core.stylize` with the same parameters and its device's default options (on CUDA: bf16
autocast, torch.compile with CUDA graphs, channels_last), after a short warm-up run; where those
are not plain fp32 it runs again with NST_PRECISION=fp32 NST_COMPILE=0, and checks that the
fast path's final loss lies within 3% of the fp32 path's. All runs use the same random weights
and seed, and every final image is scored with one fp32 objective. Prints a table, then one JSON
line with reference_ms, engine_ms, speedup and the loss gaps.

With --options it then times one engine iteration for each quality option in turn (Adam and
the Gram loss, the seed's; L-BFGS; the W2 style loss; colour matching; the averaged image; all
of them together), side by side, and prints one JSON line of them:

    python bench/speed.py --device cpu --height 128 --width 128 --iterations 20 --options
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from core import StyleParams, stylize
from core.decode import image_size
from core.device import resolve_device
from core.engine import EngineOptions
from core.images import from_seed_space, to_seed_space
from core.layers import CONV_CHANNELS, CONV_INDICES, LAYER_INDEX
from core.reference import SeedObjective, run_reference, synchronize
from core.transfer import initial_image
from core.weights import WeightsSource

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "images"


@dataclass
class Timing:
    name: str
    ms_per_iteration: float
    peak_mib: float
    final_loss: float


def conv_gflop(height: int, width: int, deepest: str = "conv5_1") -> float:
    """Forward plus input-gradient FLOPs of the convolutions up to `deepest` (weights are frozen,
    so the backward pass computes no weight gradients)."""
    flop = 0.0
    in_channels = 3
    for index, out_channels in zip(CONV_INDICES, CONV_CHANNELS, strict=False):
        if index > LAYER_INDEX[deepest]:
            break
        pools = sum(1 for i in (4, 9, 18, 27) if i < index)
        positions = (height >> pools) * (width >> pools)
        flop += 2 * 9 * in_channels * out_channels * positions
        in_channels = out_channels
    return 2 * flop / 1e9


def peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def describe(options: EngineOptions) -> str:
    parts = [options.precision, "compiled" if options.compile else "eager"]
    if options.channels_last:
        parts.append("channels_last")
    return "engine: " + ", ".join(parts)


def run_engine(
    name: str,
    overrides: dict[str, str],
    content: Image.Image,
    style: Image.Image,
    params: StyleParams,
    device: torch.device,
    score: Callable[[Image.Image], float],
) -> tuple[Timing, float]:
    """core.stylize with `overrides` in the environment: a short run first (compilation, CUDA
    graph capture, as a worker does when it starts), then the timed one."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        random = WeightsSource("random")
        stylize(content, [style], params.model_copy(update={"iterations": 3}), device=device, weights=random)
        synchronize(device)
        reset_peak(device)
        result = stylize(content, [style], params, device=device, weights=random)
        synchronize(device)
        ms = result.elapsed / params.iterations * 1e3
        return Timing(name, ms, peak_mib(device), score(result.image)), ms
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# The options timed by --options: what each changes from the seed's parameters.
OPTIONS: dict[str, dict[str, object]] = {
    "adam, gram (the seed)": {},
    "lbfgs (history 100)": {"optimizer": "lbfgs"},
    "w2 style loss": {"style_loss": "w2"},
    "color_match pca": {"color_match": "pca"},
    "average 0.99": {"average": 0.99},
    "lbfgs + w2 + sym + average": {"optimizer": "lbfgs", "style_loss": "w2", "color_match": "sym", "average": 0.99},
}


def time_option(
    content: Image.Image, style: Image.Image, params: StyleParams, device: torch.device
) -> tuple[float, float, float]:
    """ms per iteration of core.stylize with `params`, between the reports of its first and last
    iterations (the device synchronised at both, setup and the final scoring left out), after a
    3-iteration warm-up; with the peak MiB on CUDA and the final total loss."""
    random = WeightsSource("random")
    stylize(content, [style], params.model_copy(update={"iterations": 3}), device=device, weights=random)
    marks: list[float] = []

    def mark(progress: object) -> None:
        synchronize(device)
        marks.append(time.perf_counter())

    reset_peak(device)
    result = stylize(
        content, [style], params, device=device, weights=random, on_progress=mark, report_every=params.iterations
    )
    assert len(marks) == 2 and result.losses is not None
    return (marks[1] - marks[0]) / (params.iterations - 1) * 1e3, peak_mib(device), result.losses.total


def run_options(
    content: Image.Image, style: Image.Image, params: StyleParams, device: torch.device, rounds: int
) -> None:
    """Every option in turn, `rounds` times over (a shared machine's load then falls on all of
    them alike), each option's median round printed."""
    # One snapshot (iteration 1) and one report at the end: the reports' cost stays out of the timing.
    base = params.model_copy(update={"snapshot_every": params.iterations + 1})
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in OPTIONS}
    for _ in range(rounds):
        for name, change in OPTIONS.items():
            runs[name].append(time_option(content, style, base.model_copy(update=change), device))
    rows = {name: sorted(timings)[len(timings) // 2] for name, timings in runs.items()}
    seed_ms = rows["adam, gram (the seed)"][0]
    size = f"{params.height}x{params.width}"
    print(
        f"\nper option, engine defaults for {device.type}, {size}, {params.iterations} iterations, median of {rounds}"
    )
    print(f"{'option':30} {'ms/iter':>9} {'vs seed':>8} {'peak MiB':>9} {'final loss':>12}")
    for name, (ms, peak, loss) in rows.items():
        print(f"{name:30} {ms:9.2f} {ms / seed_ms:7.2f}x {peak:9.0f} {loss:12.5g}")
    print(json.dumps({"options_ms": {name: round(ms, 3) for name, (ms, _, _) in rows.items()}}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="the engine's (NST_PRECISION)")
    parser.add_argument("--compile", choices=["0", "1"], default=None, help="the engine's (NST_COMPILE)")
    parser.add_argument("--options", action="store_true", help="then time each quality option (L-BFGS, W2, ...)")
    parser.add_argument("--rounds", type=int, default=3, help="with --options: rounds over all options (median)")
    parser.add_argument("--options-only", action="store_true", help="time only the options, not the seed's loop")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.precision:
        os.environ["NST_PRECISION"] = args.precision
    if args.compile:
        os.environ["NST_COMPILE"] = args.compile
    device = resolve_device(args.device)
    params = StyleParams(iterations=args.iterations, height=args.height, width=args.width, seed=0, snapshot_every=50)
    size = (params.height, params.width)
    with Image.open(SAMPLES / "coffee.png") as c, Image.open(SAMPLES / "starry_night.jpg") as s:
        content_img, style_img = c.convert("RGB"), s.convert("RGB")
    if args.options_only:
        run_options(content_img, style_img, params, device, args.rounds)
        return
    content = to_seed_space(content_img, size).to(device)
    style = to_seed_space(style_img, size).to(device)
    reference = SeedObjective(params, content, style, device)
    x0 = initial_image(params, content, style, params.seed or 0).to(device)

    reset_peak(device)
    best_ref, ref_s = run_reference(reference, x0, params)

    # Both results are scored as delivered: 8-bit, at the content's size, brought back to the working size.
    def score(image: Image.Image) -> float:
        with torch.no_grad():
            return reference(to_seed_space(image, size).to(device)).item()

    original = image_size(content_img)
    rows = [Timing("seed: two passes, fp32", ref_s * 1e3, peak_mib(device), score(from_seed_space(best_ref, original)))]

    default = EngineOptions.for_device(device)
    timing, _ = run_engine(describe(default), {}, content_img, style_img, params, device, score)
    rows.append(timing)
    fast_gap = None
    if default.precision != "fp32" or default.compile:
        exact = {"NST_PRECISION": "fp32", "NST_COMPILE": "0"}
        timing, _ = run_engine("engine: fp32, eager", exact, content_img, style_img, params, device, score)
        rows.append(timing)
        fast_gap = abs(rows[1].final_loss - rows[2].final_loss) / rows[2].final_loss

    print_table(rows, device, size, params.iterations, fast_gap)
    if args.options:
        run_options(content_img, style_img, params, device, args.rounds)


def print_table(
    rows: list[Timing], device: torch.device, size: tuple[int, int], iterations: int, fast_gap: float | None
) -> None:
    """The timings side by side (the seed's loop first), then the same as one JSON line."""
    gflop = conv_gflop(*size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{name}, torch {torch.__version__}, {size[0]}x{size[1]}, {iterations} iterations")
    print(f"{'way':36} {'ms/iter':>9} {'TFLOP/s':>8} {'peak MiB':>9} {'final loss':>12} {'speedup':>8}")
    for row in rows:
        print(
            f"{row.name:36} {row.ms_per_iteration:9.2f} {gflop / row.ms_per_iteration:8.3f} {row.peak_mib:9.0f} "
            f"{row.final_loss:12.5g} {rows[0].ms_per_iteration / row.ms_per_iteration:7.2f}x"
        )
    loss_gap = abs(rows[1].final_loss - rows[0].final_loss) / rows[0].final_loss
    print(f"engine's final loss differs from the reference's by {100 * loss_gap:.2f}% (8-bit images, fp32 scoring)")
    if fast_gap is not None:
        verdict = "within" if fast_gap <= 0.03 else "NOT within"
        print(f"fast path's final loss is {100 * fast_gap:.2f}% from the fp32 path's: {verdict} 3%")
    print(
        json.dumps(
            {
                "device": name,
                "size": list(size),
                "reference_ms": round(rows[0].ms_per_iteration, 3),
                "engine_ms": round(rows[1].ms_per_iteration, 3),
                "speedup": round(rows[0].ms_per_iteration / rows[1].ms_per_iteration, 3),
                "loss_gap": round(loss_gap, 5),
                "fast_vs_fp32_gap": None if fast_gap is None else round(fast_gap, 5),
                "peak_mib": None if math.isnan(rows[1].peak_mib) else round(rows[1].peak_mib),
            }
        )
    )


if __name__ == "__main__":
    main()
