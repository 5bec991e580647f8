"""What checking an upload costs the API in memory: a small PNG of a large picture (an 89 KB
16-bit grey PNG of 6324x6324, 40 Mpx, under NST_MAX_INPUT_PIXELS), one at a time and three at once.

Side by side, each in a fresh process:
- reference: the check as it was, a full decode to RGB (`to_rgb` with the float64 16-bit path);
- ours: `api.uploads.check_image` (decode without converting, a JPEG at 1/8 scale, the pixels
  held against the process's budget, NST_MAX_DECODE_PIXELS, default 40 Mpx), and the worker's
  own decode (`core.decode.open_image`, 16-bit to 8-bit a band at a time).
Prints the resident memory before, at its peak and after, in MB.

    .venv/bin/python bench/decode_memory.py
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[3])

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 1e6

data = Path(sys.argv[1]).read_bytes()
how, count = sys.argv[2].split(":")
if how == "reference":
    import numpy as np
    from PIL import Image, ImageOps
    import io

    def check():  # the check before this change: the worker's full decode, 16-bit through float64
        with Image.open(io.BytesIO(data)) as img:
            img = ImageOps.exif_transpose(img)
            values = np.asarray(img, dtype=np.float64)
            peak = 65535.0 if values.max(initial=0) > 255 else 255.0
            grey = Image.fromarray(np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
            grey.convert("RGB")
elif how == "api":
    from api.decode_budget import PixelBudget
    from api.uploads import check_image
    from jobs.settings import Settings
    settings = Settings()
    budget = PixelBudget(settings.decode_pixel_budget, 600)
    def check():
        check_image(data, "content", settings, budget)
else:
    from core.decode import open_image
    def check():
        open_image(data)
base = rss()
threads = [threading.Thread(target=check) for _ in range(int(count))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3, "after": rss()}))
"""


def main() -> None:
    grey = np.full((6324, 6324), 1000, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grey16.png"
        path.write_bytes(buffer.getvalue())
        print(f"a {len(buffer.getvalue()) / 1e3:.0f} KB 16-bit grey PNG of 6324x6324; resident memory in MB")
        print(f"{'check':44} {'at once':>8} {'before':>8} {'peak':>8} {'after':>8}")
        for how, label in (
            ("reference", "reference: full decode to RGB (before)"),
            ("api", "ours: the API's check (api.uploads)"),
            ("worker", "ours: the worker's decode (open_image)"),
        ):
            for count in (1, 3):
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), f"{how}:{count}", str(ROOT)],
                    capture_output=True, text=True, check=True, cwd=ROOT,
                )  # fmt: skip
                figures = json.loads(out.stdout)
                print(f"{label:44} {count:8d} {figures['base']:8.0f} {figures['peak']:8.0f} {figures['after']:8.0f}")


if __name__ == "__main__":
    main()
