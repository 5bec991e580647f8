"""How long a job takes on this machine: seconds an iteration at a few working sizes, with the
default layers, as `nst stylize` and a worker run them (fp32 on the CPU; bf16 and compiled on a
GPU), and what that makes of a default job (2500 iterations at 384x512). The figures behind the
time expectations in the README and docs/operations.md.

    NST_VGG_WEIGHTS=random .venv/bin/python bench/job_times.py [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import StyleParams, open_image, stylize  # noqa: E402

SIZES = ((64, 64, 40), (96, 128, 30), (192, 256, 12), (384, 512, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA if available)")
    args = parser.parse_args()
    content = open_image(ROOT / "examples" / "images" / "coffee.png")
    style = open_image(ROOT / "examples" / "images" / "starry_night.jpg")
    print(f"{'working size':>14} {'s / iteration':>14} {'100 iterations':>15}")
    per_iteration = 0.0
    for height, width, iterations in SIZES:
        params = StyleParams(iterations=iterations, height=height, width=width, seed=1)
        result = stylize(content, [style], params, device=args.device)
        per_iteration = result.elapsed / iterations
        print(f"{height:>7}x{width:<6} {per_iteration:14.3f} {100 * per_iteration:14.0f}s")
    print(f"a default job (2500 iterations at 384x512): about {2500 * per_iteration / 60:.0f} min on {result.device}")


if __name__ == "__main__":
    main()
