"""Pictures out of Redis (issue 20): the previous version against this tree, side by side.

    python bench/blob_store.py                      # BEFORE, AFTER (directory), AFTER (S3, moto)
    python bench/blob_store.py --quick              # fewer polls, uploads and repeats
    python bench/blob_store.py --variants dir,s3    # leave BEFORE out

BEFORE is commit 34b0f58 (every picture in Redis), checked out by the script into a temporary
`git worktree` and run from there with this same Python; AFTER is this tree, with its blob store
in a temporary directory, then in moto's S3 server. Each variant gets a fresh stack: its own
redis-server, one API process, and (from step 3 on) one CPU worker with random weights. In order:

1. a warm-up job (coffee.png, 64x48, a few iterations): the job polled in step 5;
2. API memory: the resident set of the API process (psutil, else /proc) idle, and its peak while
   16 clients upload a 20 MB noise PNG at once (the peak is the larger of a 5 ms sampler and
   VmHWM, reset through /proc/PID/clear_refs); then upload-to-queued: the wall time of POST /jobs for the same
   20 MB picture, one at a time, and the Redis bytes the last of them holds while queued. No
   worker runs yet; these jobs are canceled afterwards;
3. a 4000x3000 photo-like job (gradients, soft blobs and noise: a PNG of about 8 MB) runs on the
   worker, 64x48 and a few iterations (the result is rendered at 4000x3000);
4. Redis bytes that finished job holds, key by key (MEMORY USAGE ... SAMPLES 0 of every key with
   its id in it);
5. poll latency: one client polls GET /jobs/{id} of the warm-up job, one request at a time and
   one every 10 ms at most, idle and then while 8 clients (another process) download the
   4000x3000 result in a loop.

Limits on submissions, queue and stored bytes are raised so that nothing is refused. Loopback
only; every wait has a ceiling. The clients run on the same machine as the service: on a small
machine they share its cores, so read the latencies as a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.s3_server import S3Server, start_s3_server  # noqa: E402
from tests.services import Service  # noqa: E402
from worker.local import nst_command  # noqa: E402

BEFORE_COMMIT = "34b0f58"
SAMPLES = ROOT / "examples" / "images"
SMALL_PARAMS = {"iterations": 5, "height": 48, "width": 64, "seed": 0}
# A 20 MB upload: RGB noise does not compress, so 2880x2300 is 19.9 MB as PNG, under the
# 20 MB upload limit and the 40 Mpx pixel limit.
BIG_UPLOAD_SIZE = (2880, 2300)
PHOTO_SIZE = (4000, 3000)
CEILING = 600.0  # seconds: only a hang waits this long
VARIANTS = {"before": "BEFORE (Redis)", "dir": "AFTER (dir)", "s3": "AFTER (S3)"}
# Nothing the bench sends may be refused: one client is the only tenant.
LIMITS_ENV = {
    "NST_MAX_SUBMISSIONS_PER_MINUTE": "10000",
    "NST_MAX_QUEUED_JOBS": "10000",
    "NST_MAX_ACTIVE_JOBS_PER_KEY": "10000",
    "NST_MAX_STORED_BYTES_PER_KEY": str(10**12),
    "NST_DECODE_WAIT_SECONDS": "600",
}


# ---------------------------------------------------------------- pictures


def photo_png(size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like picture: smooth gradients, soft colour blobs and grain in 8x8 cells, so that
    PNG cannot squeeze it to nothing (about 8 MB at 4000x3000)."""
    width, height = size
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = np.stack(
        [200 * x + 30 * np.sin(7 * y), 180 * y + 40 * np.cos(5 * x), 120 + 80 * np.sin(3 * (x + y))], axis=-1
    )
    coarse = np.clip(rng.normal(128, 25, (height // 50 + 1, width // 50 + 1, 3)), 0, 255).astype(np.uint8)
    blobs = np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), dtype=np.float32) - 128
    grain = rng.normal(0, 8, (height // 8 + 1, width // 8 + 1, 1)).astype(np.float32)
    grain = np.repeat(np.repeat(grain, 8, axis=0), 8, axis=1)[:height, :width]
    return png(np.clip(base + blobs + grain, 0, 255).astype(np.uint8))


def noise_png(size: tuple[int, int], seed: int = 1) -> bytes:
    width, height = size
    return png(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def png(pixels: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


@dataclass(frozen=True)
class Pictures:
    photo: bytes  # 4000x3000 content
    upload: bytes  # the 20 MB picture
    small: bytes  # warm-up content
    style: bytes


def make_pictures(limit: int = 20_000_000) -> Pictures:
    upload = noise_png(BIG_UPLOAD_SIZE)
    assert len(upload) <= limit, f"the 20 MB picture is {len(upload)} bytes, over the upload limit"
    return Pictures(
        photo=photo_png(PHOTO_SIZE),
        upload=upload,
        small=(SAMPLES / "coffee.png").read_bytes(),
        style=(SAMPLES / "starry_night.jpg").read_bytes(),
    )


# ---------------------------------------------------------------- stacks


@dataclass
class TreeService(Service):
    """tests.services.Service whose processes run from `tree` (a checkout of another version)
    with this same Python, or from this tree when `tree` is None."""

    tree: Path | None = None

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        if self.tree is None:
            return super()._spawn(name, *args)
        env = self.env() | {"PYTHONPATH": str(self.tree)}
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        return subprocess.Popen(
            nst_command(*args), env=env, cwd=self.tree, stdout=log, stderr=subprocess.STDOUT
        )  # fmt: skip


@contextmanager
def before_tree(scratch: Path) -> Iterator[Path]:
    """The previous version checked out beside this one; removed on the way out."""
    path = scratch / "before-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), BEFORE_COMMIT],
                   check=True, capture_output=True)  # fmt: skip
    try:
        # This Python imports the project from where it runs (cwd and PYTHONPATH first, before
        # the editable install's finder): make sure it is the old tree.
        found = subprocess.run([sys.executable, "-c", "import api, core, jobs, worker; print(jobs.__file__)"],
                               cwd=path, env=os.environ | {"PYTHONPATH": str(path)},
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        assert Path(found).is_relative_to(path), f"the old tree's processes would import {found}"
        yield path
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
        subprocess.run(["git", "-C", str(ROOT), "worktree", "prune"], check=False)


# ---------------------------------------------------------------- figures


@dataclass
class Figures:
    redis_bytes: dict[str, int] = field(default_factory=dict)  # key (id replaced by {id}) -> bytes
    queued_bytes: dict[str, int] = field(default_factory=dict)  # the same, of a queued 20 MB job
    result_bytes: int = 0
    poll_idle: list[float] = field(default_factory=list)  # seconds
    poll_loaded: list[float] = field(default_factory=list)
    downloads: int = 0
    download_bytes: int = 0
    download_seconds: float = 0.0
    rss_idle: float = 0.0  # MiB
    rss_peak: float = 0.0
    burst_statuses: dict[int, int] = field(default_factory=dict)
    burst_seconds: float = 0.0
    upload_seconds: list[float] = field(default_factory=list)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


# ---------------------------------------------------------------- step 2: uploads


def tree_pids(pid: int) -> list[int]:
    """The API process and its children (uvicorn's, when it runs several)."""
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*"):
            with suppress(OSError):
                pids += [int(child) for child in (task / "children").read_text().split()]
        index += 1
    return pids


def rss_bytes(pid: int) -> int:
    """psutil's figure where installed, else /proc's (the same VmRSS)."""
    try:
        import psutil  # type: ignore[import-untyped]
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
    return int(psutil.Process(pid).memory_info().rss)


def tree_rss_mib(pid: int) -> float:
    total = 0
    for each in tree_pids(pid):
        with suppress(Exception):  # a child that just ended
            total += rss_bytes(each)
    return total / 2**20


def reset_high_water(pid: int) -> bool:
    """Resets VmHWM of the API process (Linux); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def high_water_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """The API's resident set every few milliseconds, its largest kept."""

    def __init__(self, pid: int, every: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, tree_rss_mib(self.pid))
            self.done.wait(self.every)


def submission(content: bytes, style: bytes, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "files": [("content", ("content.png", content, "image/png")), ("style", ("style.jpg", style, "image/jpeg"))],
        "data": {"params": json.dumps(params)},
    }


async def upload_burst(url: str, pictures: Pictures, count: int) -> tuple[dict[int, int], list[str], float]:
    """`count` submissions of the 20 MB picture at once; (statuses, accepted ids, seconds)."""
    statuses: dict[int, int] = {}
    ids: list[str] = []
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=CEILING, limits=limits) as client:

        async def one() -> None:
            answer = await client.post("/jobs", **submission(pictures.upload, pictures.style, SMALL_PARAMS))
            statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
            if answer.status_code == 202:
                ids.append(answer.json()["id"])

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        return statuses, ids, time.perf_counter() - start


def measure_uploads(service: Service, pictures: Pictures, figures: Figures, burst: int, repeats: int) -> list[str]:
    """Step 2; the ids of the jobs it made, to cancel."""
    assert service.api is not None
    pid = service.api.pid
    time.sleep(1.0)  # let the warm-up's garbage settle
    figures.rss_idle = tree_rss_mib(pid)
    single = len(tree_pids(pid)) == 1
    hwm = single and reset_high_water(pid)
    sampler = Sampler(pid)
    sampler.start()
    statuses, ids, figures.burst_seconds = asyncio.run(upload_burst(service.url, pictures, burst))
    sampler.done.set()
    sampler.join()
    figures.rss_peak = max(sampler.peak, high_water_mib(pid) if hwm else 0.0)
    figures.burst_statuses = statuses
    with httpx.Client(base_url=service.url, timeout=CEILING) as client:
        for _ in range(repeats):
            start = time.perf_counter()
            answer = client.post("/jobs", **submission(pictures.upload, pictures.style, SMALL_PARAMS))
            elapsed = time.perf_counter() - start
            assert answer.status_code == 202, answer.text
            figures.upload_seconds.append(elapsed)
            ids.append(answer.json()["id"])
    figures.queued_bytes = redis_bytes(service.redis_url, ids[-1])
    return ids


# ---------------------------------------------------------------- steps 3 and 4: a finished job


def wait_final(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + CEILING
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            assert job["status"] == "succeeded", job
            return job
        time.sleep(0.2)
    raise RuntimeError(f"job {job_id} did not end within {CEILING:.0f} s")


def redis_bytes(redis_url: str, job_id: str) -> dict[str, int]:
    """MEMORY USAGE of every key with the job's id in it; snapshots together."""
    groups: dict[str, int] = {}
    client = redis.Redis.from_url(redis_url)
    try:
        for raw in client.scan_iter(match=f"*{job_id}*", count=1000):
            key = raw.decode().replace(job_id, "{id}")
            if ":snapshot:" in key:
                key = key[: key.index(":snapshot:")] + ":snapshot:*"
            groups[key] = groups.get(key, 0) + int(client.memory_usage(raw, samples=0) or 0)
    finally:
        client.close()
    return groups


# ---------------------------------------------------------------- step 5: polls under downloads


def download_loop(url: str, clients: int, stop: EventType, count: Synchronized[int], size: Synchronized[int]) -> None:
    """In a process of its own (its own cores' share, not the poller's event loop): `clients`
    connections download `url` again and again until `stop`."""

    async def run() -> None:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=CEILING, limits=limits) as client:

            async def one() -> None:
                while not stop.is_set():
                    received = 0
                    async with client.stream("GET", url) as answer:
                        async for chunk in answer.aiter_raw():
                            received += len(chunk)
                    assert answer.status_code == 200, answer.status_code
                    with count.get_lock():
                        count.value += 1
                    with size.get_lock():
                        size.value += received

            await asyncio.gather(*(one() for _ in range(clients)))

    asyncio.run(run())


def poll_times(url: str, polls: int, interval: float) -> list[float]:
    """One client, one poll at a time, one every `interval` seconds at most (a client that polls
    often, not a load generator: the window then spans many downloads), after 10 unmeasured."""
    times: list[float] = []
    with httpx.Client(timeout=CEILING) as client:
        for index in range(polls + 10):
            start = time.perf_counter()
            answer = client.get(url)
            elapsed = time.perf_counter() - start
            assert answer.status_code == 200, answer.text
            if index >= 10:
                times.append(elapsed)
            time.sleep(max(0.0, interval - elapsed))
    return times


def measure_polls(service: Service, poll_id: str, result_id: str, figures: Figures, args: argparse.Namespace) -> None:
    poll_url, result_url = f"{service.url}/jobs/{poll_id}", f"{service.url}/jobs/{result_id}/result"
    polls, clients = args.polls, args.downloaders
    figures.poll_idle = poll_times(poll_url, polls, args.poll_interval)
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    count = context.Value("q", 0)
    size = context.Value("q", 0)
    loader = context.Process(target=download_loop, args=(result_url, clients, stop, count, size))
    loader.start()
    try:
        deadline = time.monotonic() + CEILING
        while count.value < clients and time.monotonic() < deadline:  # every client under way
            assert loader.is_alive(), "the downloading process died"
            time.sleep(0.05)
        first, first_bytes, start = count.value, size.value, time.perf_counter()
        figures.poll_loaded = poll_times(poll_url, polls, args.poll_interval)
        figures.download_seconds = time.perf_counter() - start
        figures.downloads, figures.download_bytes = count.value - first, size.value - first_bytes
    finally:
        stop.set()
        loader.join(timeout=CEILING)
        if loader.is_alive():
            loader.kill()


# ---------------------------------------------------------------- one variant

STARTED = time.monotonic()


def say(name: str, what: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.0f} s] {name}: {what}", flush=True)


def run_variant(name: str, scratch: Path, pictures: Pictures, args: argparse.Namespace, tree: Path | None) -> Figures:
    root = scratch / name
    root.mkdir()
    env = dict(LIMITS_ENV)
    s3: S3Server | None = None
    if name == "s3":
        s3 = start_s3_server(root / "moto.log")
        env |= s3.env()
    service = TreeService(root, env, tree=tree)
    figures = Figures()
    try:
        say(name, "starting redis-server and the API")
        service.start(workers=0)
        with httpx.Client(base_url=service.url, timeout=CEILING) as client:
            warm = client.post("/jobs", **submission(pictures.small, pictures.style, SMALL_PARAMS))
            assert warm.status_code == 202, warm.text
            poll_id = warm.json()["id"]
            say(name, f"uploads: {args.uploads} at once, then {args.upload_repeats} one at a time")
            for job_id in measure_uploads(service, pictures, figures, args.uploads, args.upload_repeats):
                client.post(f"/jobs/{job_id}/cancel")  # nothing of step 2 reaches the worker
            say(name, "a 4000x3000 job on one worker")
            service.start_worker()
            service.wait_ready(1, timeout=CEILING)
            big = client.post("/jobs", **submission(pictures.photo, pictures.style, SMALL_PARAMS))
            assert big.status_code == 202, big.text
            big_id = big.json()["id"]
            wait_final(client, poll_id)
            wait_final(client, big_id)
            figures.redis_bytes = redis_bytes(service.redis_url, big_id)
            figures.result_bytes = len(client.get(f"/jobs/{big_id}/result").content)
        say(name, f"{args.polls} polls idle, then while {args.downloaders} clients download")
        measure_polls(service, poll_id, big_id, figures, args)
    except BaseException:
        print(service.logs(), file=sys.stderr)
        raise
    finally:
        service.stop()
        if s3 is not None:
            s3.stop()
    say(name, "done")
    return figures


# ---------------------------------------------------------------- the table


def mb(value: float) -> str:
    return f"{value / 1e6:.2f} MB" if value >= 100_000 else f"{value / 1e3:.1f} kB"


def report(results: dict[str, Figures], args: argparse.Namespace, pictures: Pictures) -> None:
    names = list(results)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Any) -> None:
        rows.append((label, [cell(results[name]) for name in names]))

    keys = sorted({key for figures in results.values() for key in figures.redis_bytes})
    for key in keys:
        row(f"Redis: `{key}`", lambda f, k=key: mb(f.redis_bytes[k]) if k in f.redis_bytes else "-")
    row("Redis: all the job's keys", lambda f: mb(sum(f.redis_bytes.values())))
    row(
        "Redis: all but snapshots",
        lambda f: mb(sum(v for k, v in f.redis_bytes.items() if not k.endswith(":snapshot:*"))),
    )
    row("Redis: a queued job with a 20 MB upload", lambda f: mb(sum(f.queued_bytes.values())))
    row("result PNG served", lambda f: mb(f.result_bytes))
    row("poll p50 / p99, idle", lambda f: f"{1e3 * percentile(f.poll_idle, 0.5):.1f} / "
        f"{1e3 * percentile(f.poll_idle, 0.99):.1f} ms")  # fmt: skip
    row(f"poll p50 / p99, {args.downloaders} downloading", lambda f: f"{1e3 * percentile(f.poll_loaded, 0.5):.1f} / "
        f"{1e3 * percentile(f.poll_loaded, 0.99):.1f} ms")  # fmt: skip
    row("p99 loaded / idle", lambda f: f"{percentile(f.poll_loaded, 0.99) / percentile(f.poll_idle, 0.99):.1f}x")
    row("downloads meanwhile", lambda f: f"{f.downloads} ({f.download_bytes / 1e6 / f.download_seconds:.0f} MB/s)")
    row("API RSS idle", lambda f: f"{f.rss_idle:.0f} MiB")
    row(f"API RSS peak, {args.uploads} uploads of 20 MB", lambda f: f"{f.rss_peak:.0f} MiB")
    row("API RSS rise", lambda f: f"{f.rss_peak - f.rss_idle:.0f} MiB")
    row(f"the {args.uploads} uploads: statuses, seconds", lambda f: f"{f.burst_statuses} in {f.burst_seconds:.1f} s")
    row(
        f"upload-to-queued, 20 MB (median of {args.upload_repeats})",
        lambda f: (
            f"{statistics.median(f.upload_seconds):.2f} s ({min(f.upload_seconds):.2f}-{max(f.upload_seconds):.2f})"
        ),
    )
    print(
        f"\n4000x3000 content {mb(len(pictures.photo))}, 20 MB upload {len(pictures.upload)} bytes "
        f"({BIG_UPLOAD_SIZE[0]}x{BIG_UPLOAD_SIZE[1]}), {args.polls} polls each way, one every "
        f"{1e3 * args.poll_interval:.0f} ms at most\n"
    )
    print("| | " + " | ".join(VARIANTS[name] for name in names) + " |")
    print("| --- |" + " --- |" * len(names))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    summary = {
        name: {
            "redis_bytes": figures.redis_bytes,
            "queued_job_redis_bytes": figures.queued_bytes,
            "poll_idle_ms": [round(1e3 * percentile(figures.poll_idle, q), 2) for q in (0.5, 0.99)],
            "poll_loaded_ms": [round(1e3 * percentile(figures.poll_loaded, q), 2) for q in (0.5, 0.99)],
            "rss_idle_mib": round(figures.rss_idle),
            "rss_peak_mib": round(figures.rss_peak),
            "upload_seconds": [round(s, 3) for s in figures.upload_seconds],
        }
        for name, figures in results.items()
    }
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="before,dir,s3", help="comma-separated: before, dir, s3")
    parser.add_argument("--polls", type=int, default=500, help="measured polls, idle and under downloads each")
    parser.add_argument("--poll-interval", type=float, default=0.01, help="seconds from one poll's start to the next's")
    parser.add_argument("--downloaders", type=int, default=8)
    parser.add_argument("--uploads", type=int, default=16, help="20 MB uploads at once")
    parser.add_argument("--upload-repeats", type=int, default=5, help="20 MB uploads one at a time")
    parser.add_argument("--quick", action="store_true", help="200 polls, 8 uploads at once, 3 one at a time")
    args = parser.parse_args()
    if args.quick:
        args.polls, args.uploads, args.upload_repeats = 200, 8, 3
    names = [name.strip() for name in args.variants.split(",") if name.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}: choose among {sorted(VARIANTS)}")
    say("all", "making the pictures")
    pictures = make_pictures()
    results: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory(prefix="nst-blob-bench-") as tmp:
        scratch = Path(tmp)
        for name in names:
            if name == "before":
                with before_tree(scratch) as tree:
                    results[name] = run_variant(name, scratch, pictures, args, tree)
            else:
                results[name] = run_variant(name, scratch, pictures, args, None)
    report(results, args, pictures)
    print(f"\n({time.monotonic() - STARTED:.0f} s in all)")


if __name__ == "__main__":
    main()
