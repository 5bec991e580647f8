"""How long `nst up` is without a worker after one is killed: SIGKILL the worker (what the
out-of-memory killer sends) a few times and time, each time, until the new process exists and
until it has loaded its weights and said it is alive (its first heartbeat in Redis).

    python bench/restart.py --kills 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.keys import WORKERS_KEY
from worker.local import free_port, nst_command, wait_for_http


def worker_pid(parent: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and "core.cli worker" in cmdline:
            return int(entry.name)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    env = os.environ | {"NST_VGG_WEIGHTS": "random", "NST_DEVICE": "cpu", "NST_WORKER_HEARTBEAT_SECONDS": "1"}
    env.pop("NST_REDIS_URL", None)
    with tempfile.TemporaryDirectory() as data:
        log_path = Path(data) / "up.log"
        with open(log_path, "wb") as log_file:
            up = subprocess.Popen(
                nst_command("up", "--port", str(port), "--data-dir", data), env=env,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            wait_for_http(f"http://127.0.0.1:{port}/readyz", up, timeout=180)
            url = next(word for word in log_path.read_text().split() if word.startswith("redis://"))
            client = redis.Redis.from_url(url)
            spawned, ready = [], []
            for _ in range(args.kills):
                victim = worker_pid(up.pid)
                assert victim is not None, "no worker"
                os.kill(victim, signal.SIGKILL)
                killed = time.monotonic()
                new_pid = None
                while True:
                    if new_pid is None:
                        new_pid = worker_pid(up.pid)
                        new_pid = new_pid if new_pid != victim else None
                        if new_pid is not None:
                            spawned.append(time.monotonic() - killed)
                    if new_pid is not None and client.zscore(WORKERS_KEY, f"{os.uname().nodename}:{new_pid}"):
                        ready.append(time.monotonic() - killed)
                        break
                    if time.monotonic() - killed > 120:
                        raise SystemExit(f"no new worker within 120 s:\n{log_path.read_text()[-3000:]}")
                    time.sleep(0.05)
                time.sleep(2)  # let it settle before the next kill (a restart within 60 s doubles the back-off)
            print(f"kills: {args.kills} (back-off 1, 2, 4 s as they come within a minute)")
            print(f"{'kill':>4}  {'new process':>12}  {'worker ready':>12}")
            for index, (s, r) in enumerate(zip(spawned, ready, strict=True), start=1):
                print(f"{index:>4}  {s:>10.2f} s  {r:>10.2f} s")
            print(f"median ready after kill: {statistics.median(ready):.2f} s")
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)


if __name__ == "__main__":
    main()
