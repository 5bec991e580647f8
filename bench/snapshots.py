"""What snapshots cost a job: loop time with and without them, before and after the writer thread.

    python bench/snapshots.py                       # 600x400 and 4000x3000 contents, 64x64 and 384x512
    python bench/snapshots.py --quick               # fewer iterations

For each content size and working size, one run each, side by side:
- none:   no progress callback at all (the loop alone);
- before: the old path, kept here only: at each report, on the loop's thread, render at the
          content's full size, JPEG-encode and write to Redis (what the worker did before);
- after:  the worker's ProgressPublisher: the loop hands the report to a writer thread, which
          renders at most NST_SNAPSHOT_MAX_SIDE (1024) px on the long side, encodes and writes.
Overhead = (loop time - none's) / none's. Then the Redis bytes a finished default-sized job
holds, key by key (MEMORY USAGE), through the real publisher. A real redis-server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from core.memory import MemoryEstimate  # noqa: E402
from core.output import encode_image  # noqa: E402
from core.params import StyleParams  # noqa: E402
from core.transfer import Progress, stylize  # noqa: E402
from core.weights import WeightsSource  # noqa: E402
from jobs.record import JobRecord, new_job_id, utc_now  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from worker.local import free_port, start_redis, stop_processes  # noqa: E402
from worker.progress_publisher import JPEG_QUALITY, ProgressPublisher, finite_values  # noqa: E402

SAMPLE = ROOT / "examples" / "images" / "coffee.png"


def content_of(width: int, height: int) -> Image.Image:
    return Image.open(SAMPLE).convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def new_running_job(store: JobStore, params: StyleParams, content: bytes) -> tuple[JobRecord, str]:
    record = JobRecord(id=new_job_id(), created_at=utc_now(), params=params.model_dump(), style_count=1)
    record = store.create(record, content, [content])
    token = f"bench-{record.id[:8]}"
    store.claim(record.id, {"status": "running", "attempts": 1}, token, 3600)
    return record, token


class OldPublisher:
    """The path before the writer thread: everything on the loop's thread, at full size."""

    def __init__(self, store: JobStore, record: JobRecord, token: str) -> None:
        self.store, self.record, self.token = store, record, token
        self.snapshots: list[int] = []
        self.last_write = 0.0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if not progress.is_snapshot and progress.iteration < progress.total and now - self.last_write < 0.5:
            return
        fields: dict[str, object] = {"iteration": progress.iteration, "losses": finite_values(progress.losses.public())}
        snapshot = None
        if progress.is_snapshot:
            metadata = {"weights": "random", "iteration": str(progress.iteration)}
            snapshot = (progress.iteration, encode_image(progress.image(), "JPEG", metadata, JPEG_QUALITY))
            self.snapshots.append(progress.iteration)
            fields["snapshots"] = self.snapshots
        self.store.publish(self.record.id, self.token, fields, {**fields}, snapshot=snapshot)
        self.last_write = now


class Timed:
    """Wraps a callback to add up the time the loop's thread spends in it."""

    def __init__(self, callback: object) -> None:
        self.callback = callback
        self.seconds = 0.0

    def __call__(self, progress: Progress) -> None:
        start = time.perf_counter()
        self.callback(progress)  # type: ignore[operator]
        self.seconds += time.perf_counter() - start


def loop_seconds(content: Image.Image, params: StyleParams, on_progress: object) -> float:
    start = time.perf_counter()
    stylize(
        content, [content], params, weights=WeightsSource.parse("random"),
        on_progress=on_progress,  # type: ignore[arg-type]
        report_every=max(1, params.snapshot_every // 5) if on_progress is not None else None,
    )  # fmt: skip
    return time.perf_counter() - start


def run(
    store: JobStore, content_size: tuple[int, int], working: tuple[int, int], iterations: int, repeats: int
) -> None:
    """Each mode `repeats` times, interleaved; the fastest run of each counts (the least disturbed)."""
    content = content_of(*content_size)
    data = encode_image(content, "PNG", {})
    params = StyleParams(iterations=iterations, height=working[0], width=working[1], seed=0)
    best: dict[str, float] = {}
    in_callback: dict[str, float] = {}
    waits = 0
    writer_cpu = 0.0
    for _ in range(repeats):
        best["none"] = min(best.get("none", 1e9), loop_seconds(content, params, None))
        record, token = new_running_job(store, params, data)
        old = Timed(OldPublisher(store, record, token))
        elapsed = loop_seconds(content, params, old)
        if elapsed < best.get("before", 1e9):
            best["before"], in_callback["before"] = elapsed, old.seconds
        record, token = new_running_job(store, params, data)
        publisher = ProgressPublisher(store, record, "random", token, MemoryEstimate(0, False), snapshot_max_side=1024)
        new = Timed(publisher)
        elapsed = loop_seconds(content, params, new)
        publisher.close(drain=True)
        waits += publisher.writer.waits
        if elapsed < best.get("after", 1e9):
            best["after"], in_callback["after"] = elapsed, new.seconds
            writer_cpu = publisher.writer.busy_seconds
    none = best["none"]
    snapshots = len(params.snapshot_iterations())
    print(
        f"| {content_size[0]}x{content_size[1]} | {working[0]}x{working[1]} | {iterations} | {snapshots} | "
        f"{none:.2f} s | {best['before']:.2f} s ({100 * (best['before'] - none) / none:+.1f}%; "
        f"{1000 * in_callback['before'] / snapshots:.0f} ms a snapshot in the loop) | "
        f"{best['after']:.2f} s ({100 * (best['after'] - none) / none:+.1f}%; "
        f"{1000 * in_callback['after'] / snapshots:.1f} ms a snapshot in the loop; writer CPU "
        f"{100 * writer_cpu / none:.1f}% of the loop) | {waits} |"
    )


def redis_bytes(store: JobStore, content_size: tuple[int, int]) -> None:
    """A finished job through the real publisher: its keys and their MEMORY USAGE. A default job
    makes 51 snapshots (1, 50, ..., 2500); 2500 iterations at 384x512 take over an hour on this
    CPU, so this job takes its 51 at iterations 1 to 51 (the earliest pictures are the noisiest,
    the largest as JPEG: an upper bound)."""
    content = content_of(*content_size)
    params = StyleParams(iterations=51, snapshot_every=1, seed=0)
    iterations = params.iterations
    record, token = new_running_job(store, params, encode_image(content, "JPEG", {}))
    publisher = ProgressPublisher(store, record, "random", token, MemoryEstimate(0, False), snapshot_max_side=1024)
    stylize(content, [content], params, weights=WeightsSource.parse("random"), on_progress=publisher,
            report_every=max(1, params.snapshot_every // 5))  # fmt: skip
    publisher.close(drain=True)
    groups: dict[str, list[int]] = {}
    for key in store.redis.scan_iter(match=f"nst:job:{record.id}*"):
        name = key.decode().removeprefix(f"nst:job:{record.id}")
        group = ":snapshot:*" if name.startswith(":snapshot:") else name or "(the job hash)"
        groups.setdefault(group, []).append(int(store.redis.memory_usage(key) or 0))
    print(f"\n## Redis bytes of one finished {params.height}x{params.width} job, {iterations} iterations, "
          f"content {content_size[0]}x{content_size[1]} (MEMORY USAGE)")  # fmt: skip
    for group, sizes in sorted(groups.items()):
        print(f"{group:>22}: {len(sizes):>3} key(s), {sum(sizes) / 1e6:8.2f} MB")
    total = sum(sum(v) for v in groups.values())
    print(f"{'all':>22}: {total / 1e6:8.2f} MB; snapshots {sum(groups.get(':snapshot:*', [])) / 1e6:.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each mode at 64x64 (the fastest counts)")
    parser.add_argument("--small-only", action="store_true", help="only the 64x64 rows (no 384x512, no Redis bytes)")
    args = parser.parse_args()
    os.environ.setdefault("NST_VGG_WEIGHTS", "random")
    small = 200 if args.quick else 500
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        redis_process = start_redis(port, Path(scratch))
        try:
            store = JobStore.from_url(f"redis://127.0.0.1:{port}/0", 3600)
            print(f"# snapshot cost (CPU, {os.cpu_count()} cores), snapshots every 50 iterations and at 1")
            print("| content | working | iterations | snapshots | no callback | before | after | loop waited |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- |")
            for content_size in ((600, 400), (4000, 3000)):
                run(store, content_size, (64, 64), small, args.repeats)
            if not args.small_only:
                for content_size in ((600, 400), (4000, 3000)):
                    run(store, content_size, (384, 512), 50, 1)
                redis_bytes(store, (4000, 3000))
        finally:
            stop_processes([redis_process])


if __name__ == "__main__":
    main()
