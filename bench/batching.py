"""Jobs per hour with continuous batching against without, side by side in one run.

    .venv/bin/python bench/batching.py                               # CPU: 64x64 and 128x128
    .venv/bin/python bench/batching.py --device cuda --sizes 384x512 --iterations 300

For each working size and each NST_MAX_BATCH (1, then --batch), it starts a stack of its own
(redis-server, one worker, the API, all on 127.0.0.1), submits --jobs compatible jobs at once
through POST /jobs (the same size; their seeds, style weights and learning rates differ), and
follows them to the end. It prints the jobs per hour (the jobs over the time from the first
submission to the last completion) and, per job, the latency to its first snapshot and to its
completion (median and worst), so the cost of batching to each job shows beside its gain.
Random weights unless NST_VGG_WEIGHTS is set; the worker skips its calibration (NST_CALIBRATE=0).

    .venv/bin/python bench/batching.py --in-process --device cuda --sizes 384x512 --iterations 300

--in-process needs no service (only torch and pydantic: what bench/gpu_check.sh carries): the same
jobs run in this process, one after another through core.stylize against all in one batch
(core.batch, at most --batch at a time, the rest joining as others end), timed from the start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.local import nst_command, start_redis, stop_processes, wait_for_http  # noqa: E402

CEILING_SECONDS = 3600  # only a hang reaches it
CONTENT = ROOT / "examples" / "images" / "coffee.png"
STYLE = ROOT / "examples" / "images" / "starry_night.jpg"


@dataclass
class Outcome:
    jobs_per_hour: float
    wall_seconds: float
    first_snapshot: list[float]  # seconds from submission, per job
    completion: list[float]
    statuses: list[str]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(size: tuple[int, int], max_batch: int, args: argparse.Namespace, workdir: Path) -> Outcome:
    import subprocess

    redis_port, api_port = free_port(), free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "NST_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "NST_BLOB_STORE": str(workdir / "blobs"),
        "NST_VGG_WEIGHTS": os.environ.get("NST_VGG_WEIGHTS", "random"),
        "NST_CALIBRATE": "0",
        "NST_MAX_BATCH": str(max_batch),
        "NST_WORKER_HEARTBEAT_SECONDS": "1",
        "NST_API_PROCESSES": "1",
    }
    if args.device:
        env["NST_DEVICE"] = args.device
    processes: list[subprocess.Popen[bytes]] = []
    redis_server = start_redis(redis_port, workdir / f"redis-{max_batch}", workdir / "redis.log")
    try:
        log = (workdir / f"worker-{size[0]}x{size[1]}-{max_batch}.log").open("wb")
        processes.append(subprocess.Popen(nst_command("worker"), env=env, stdout=log, stderr=subprocess.STDOUT))
        api_log = (workdir / "api.log").open("ab")
        processes.append(
            subprocess.Popen(nst_command("api", "--port", str(api_port)), env=env, stdout=api_log, stderr=api_log)
        )
        url = f"http://127.0.0.1:{api_port}"
        wait_for_http(f"{url}/healthz", processes[-1], timeout=CEILING_SECONDS)
        with httpx.Client(base_url=url, timeout=60) as client:
            wait_for_worker(client)
            if args.warm:  # one job first: the worker's first-job costs are not the batch's
                follow(client, [submit(client, size, 0, args.iterations)])
            return measure(client, size, args)
    finally:
        stop_processes(processes, grace=30)
        stop_processes([redis_server])


def wait_for_worker(client: httpx.Client) -> None:
    deadline = time.monotonic() + CEILING_SECONDS
    while time.monotonic() < deadline:
        answer = client.get("/readyz")
        if answer.status_code == 200 and answer.json().get("workers", 0) >= 1:
            return
        time.sleep(0.2)
    raise SystemExit("the worker did not start")


def job_params(size: tuple[int, int], index: int, iterations: int) -> dict[str, Any]:
    """The index-th job's parameters: one size, different seeds, style weights and step sizes."""
    return {
        "iterations": iterations,
        "height": size[0],
        "width": size[1],
        "seed": index,
        "style_weight": [1e2, 1e3, 1e4][index % 3],
        "learning_rate": [1.0, 2.0][index % 2],
        "snapshot_every": 50,
    }


def submit(client: httpx.Client, size: tuple[int, int], index: int, iterations: int) -> dict[str, Any]:
    params = job_params(size, index, iterations)
    files = [("content", (CONTENT.name, CONTENT.read_bytes())), ("style", (STYLE.name, STYLE.read_bytes()))]
    answer = client.post("/jobs", files=files, data={"params": json.dumps(params)})
    if answer.status_code != 202:
        raise SystemExit(f"POST /jobs answered {answer.status_code}: {answer.text}")
    job: dict[str, Any] = answer.json()
    job["submitted"] = time.monotonic()
    return job


def follow(client: httpx.Client, jobs: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Poll until every job ends; when each first had a snapshot, and when each ended. One
    listing a quarter second: polling each job at 20 Hz would take a share of the 2 cores the
    worker is measured on."""
    first_snapshot: dict[str, float] = {}
    ended: dict[str, float] = {}
    ids = {job["id"] for job in jobs}
    views: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + CEILING_SECONDS
    while len(ended) < len(jobs):
        if time.monotonic() > deadline:
            raise SystemExit("the jobs did not end")
        listing = client.get("/jobs", params={"limit": 100}).json()["items"]
        now = time.monotonic()
        for view in listing:
            job_id = view["id"]
            if job_id not in ids or job_id in ended:
                continue
            if view["snapshots"] and job_id not in first_snapshot:
                first_snapshot[job_id] = now
            if view["status"] in ("succeeded", "failed", "canceled"):
                ended[job_id] = now
                views[job_id] = view
        time.sleep(0.25)
    for job in jobs:
        job["view"] = views[job["id"]]
    return first_snapshot, ended


def measure(client: httpx.Client, size: tuple[int, int], args: argparse.Namespace) -> Outcome:
    jobs = [submit(client, size, index + 1, args.iterations) for index in range(args.jobs)]
    first_snapshot, ended = follow(client, jobs)
    # The server's own clock for the wall time: submission of the first to the end of the last.
    created = min(parse(job["view"]["created_at"]) for job in jobs)
    finished = max(parse(job["view"]["finished_at"]) for job in jobs)
    wall = finished - created
    return Outcome(
        jobs_per_hour=len(jobs) * 3600 / wall,
        wall_seconds=wall,
        first_snapshot=[first_snapshot.get(job["id"], ended[job["id"]]) - job["submitted"] for job in jobs],
        completion=[ended[job["id"]] - job["submitted"] for job in jobs],
        statuses=[job["view"]["status"] for job in jobs],
    )


def run_in_process(size: tuple[int, int], max_batch: int, args: argparse.Namespace) -> Outcome:
    """The jobs in this process: queued at once, then run as a worker with NST_MAX_BATCH would."""
    from core import StyleParams, open_image, stylize
    from core.batch import BatchedRun, batch_member
    from core.transfer import Progress

    content, style = open_image(CONTENT), open_image(STYLE)
    params = [StyleParams(**job_params(size, index + 1, args.iterations)) for index in range(args.jobs)]
    if args.warm:  # kernels picked (and graphs compiled) before the clock starts, as in a warm worker
        warm = StyleParams(iterations=2, height=size[0], width=size[1])
        stylize(content, [style], warm, device=args.device)
        for batch in sorted({1, *(1 << i for i in range(max_batch.bit_length()) if 1 << i <= max_batch)}):
            run = BatchedRun()
            for _ in range(batch):
                run.add(batch_member(content, [style], warm, device=args.device))
            while len(run):
                run.step()
    begin = time.perf_counter()
    first_snapshot: dict[int, float] = {}
    completion: dict[int, float] = {}

    def snapshot_seen(index: int) -> Any:
        def seen(progress: Progress) -> None:
            if progress.is_snapshot and index not in first_snapshot:
                progress.image(256)  # a worker renders and stores each snapshot
                first_snapshot[index] = time.perf_counter() - begin

        return seen

    if max_batch == 1:
        for index, p in enumerate(params):
            stylize(content, [style], p, device=args.device, on_progress=snapshot_seen(index))
            completion[index] = time.perf_counter() - begin
    else:
        waiting = list(enumerate(params))
        run = BatchedRun()
        while waiting or len(run):
            while waiting and len(run) < max_batch:
                index, p = waiting.pop(0)
                run.add(batch_member(content, [style], p, name=str(index), device=args.device,
                                     on_progress=snapshot_seen(index)))  # fmt: skip
            for member in run.step():
                completion[int(member.name)] = time.perf_counter() - begin
    wall = max(completion.values())
    return Outcome(
        jobs_per_hour=len(params) * 3600 / wall,
        wall_seconds=wall,
        first_snapshot=[first_snapshot[i] for i in range(len(params))],
        completion=[completion[i] for i in range(len(params))],
        statuses=["succeeded"] * len(params),
    )


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def describe_device(device: str | None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return "CPU"


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu, cuda (default: the worker's own choice)")
    parser.add_argument("--sizes", default="64x64,128x128", help="working sizes, HEIGHTxWIDTH, comma-separated")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="NST_MAX_BATCH of the batched runs")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--no-warm", dest="warm", action="store_false", help="skip the warm-up job")
    parser.add_argument("--in-process", action="store_true", help="core only: no service (see above)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results: dict[str, dict[int, Outcome]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            label = f"{size[0]}x{size[1]}"
            results[label] = {}
            for max_batch in (1, args.batch):
                if args.in_process:
                    results[label][max_batch] = run_in_process(size, max_batch, args)
                else:
                    results[label][max_batch] = run_once(size, max_batch, args, Path(tmp))
    where = "in one process" if args.in_process else "one worker"
    print(f"# {args.jobs} compatible jobs of {args.iterations} iterations queued at once, {where} "
          f"({describe_device(args.device)}, {os.cpu_count()} cores)")  # fmt: skip
    header = f"{'size':<10}{'NST_MAX_BATCH':>14}{'jobs/hour':>11}{'gain':>7}{'wall s':>8}"
    header += f"{'1st snapshot s (median/max)':>29}{'completion s (median/max)':>27}"
    print(header)
    for label, by_batch in results.items():
        alone = by_batch[1]
        for max_batch, outcome in by_batch.items():
            gain = outcome.jobs_per_hour / alone.jobs_per_hour
            snap = f"{statistics.median(outcome.first_snapshot):.1f} / {max(outcome.first_snapshot):.1f}"
            done = f"{statistics.median(outcome.completion):.1f} / {max(outcome.completion):.1f}"
            print(f"{label:<10}{max_batch:>14}{outcome.jobs_per_hour:>11.0f}{gain:>6.2f}x{outcome.wall_seconds:>8.1f}"
                  f"{snap:>29}{done:>27}")  # fmt: skip
            if set(outcome.statuses) != {"succeeded"}:
                print(f"  not every job succeeded: {outcome.statuses}")
    if args.json:
        figures = {label: {str(b): vars(o) for b, o in by.items()} for label, by in results.items()}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
