"""What the container files say, checked by what runs here (no Docker engine on this machine):
`docker-compose config`, and the commands each Dockerfile runs, in a fresh virtual environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from jobs.settings import Settings
from jobs.store import JobStore
from tests.conftest import ROOT
from tests.services import HANG, RedisServer
from worker.local import free_port, stop_processes, wait_for_http


def dockerfile_commands(name: str) -> tuple[list[str], list[str]]:
    """The RUN lines that install or run the project (pip, nst), and the CMD, of a Dockerfile."""
    runs, cmd = [], []
    for line in (ROOT / name).read_text().splitlines():
        if line.startswith("RUN "):
            for part in line.removeprefix("RUN ").split("&&"):
                part = part.strip()
                if part.startswith(("pip ", "nst ")):
                    runs.append(part)
        elif line.startswith("CMD "):
            cmd = json.loads(line.removeprefix("CMD "))
    return runs, cmd


def make_venv(path: Path, share_site_packages: bool) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=HANG)
    if share_site_packages:
        # torch is 5 GB: the worker's venv sees this one's packages instead of installing it again.
        site = next(path.glob("lib/python*/site-packages"))
        (site / "shared.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    return path / "bin"


def run_in(bin_dir: Path, command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    argv[0] = str(bin_dir / argv[0])
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def copied_by_dockerfiles() -> set[str]:
    """The sources of every COPY line of the two Dockerfiles."""
    sources = set()
    for name in ("Dockerfile.api", "Dockerfile.worker"):
        for line in (ROOT / name).read_text().splitlines():
            if line.startswith("COPY "):
                sources.update(shlex.split(line)[1:-1])
    return sources


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """What the Dockerfiles COPY, and nothing else, so that a missing file shows."""
    target = tmp_path / "app"
    target.mkdir()
    for name in sorted(copied_by_dockerfiles()):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, target / name)
    return target


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A database of the test's own: the processes it starts use it."""
    return redis_server.url(redis_server.new_database())


def test_compose_file_is_valid_and_reserves_a_gpu_per_worker() -> None:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    config = done.stdout
    assert "driver: nvidia" in config and "capabilities:" in config and "gpu" in config
    # One service per GPU, each pinned to its card (`count: 1` on a scaled service gives every
    # replica the same one).
    assert "worker-gpu0:" in config and re.search(r"device_ids:\s*\n?\s*- '?0'?", config), config
    assert "appendonly" in config and "service_healthy" in config and "Dockerfile.worker" in config
    assert "webhooks" in config  # the deliverer of webhooks runs beside the API
    assert "host_ip: 127.0.0.1" in config or "127.0.0.1:8000:8000" in config  # published on loopback only


def test_compose_keeps_pictures_in_minio_and_bounds_redis() -> None:
    """Redis holds state under a maxmemory it never evicts from; the pictures go to MinIO's bucket,
    which a one-shot service creates before the API, the deliverer and the workers start."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed")
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config"],
        capture_output=True, text=True, env=os.environ | {"NST_REDIS_MAXMEMORY": "3gb"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    redis_args = services["redis"]["command"]
    assert redis_args[redis_args.index("--maxmemory") + 1] == "3gb"
    assert redis_args[redis_args.index("--maxmemory-policy") + 1] == "noeviction"
    assert services["minio"]["image"].startswith("minio/minio") and services["minio"]["healthcheck"]["test"]
    assert any(volume.endswith(":/data:rw") or volume.endswith(":/data") for volume in services["minio"]["volumes"])
    bucket = services["minio-bucket"]
    script = " ".join(bucket["command"])
    assert bucket["image"].startswith("minio/mc") and "mc alias set" in script and "mc mb --ignore-existing" in script
    for name in ("api", "webhooks", "worker-gpu0"):
        env, needs = services[name]["environment"], services[name]["depends_on"]
        assert env["NST_BLOB_STORE"].startswith("s3://") and env["AWS_ENDPOINT_URL"] == "http://minio:9000", name
        assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"], name
        assert needs["minio"]["condition"] == "service_healthy", name
        assert needs["minio-bucket"]["condition"] == "service_completed_successfully", name
    assert "NST_API_PROCESSES" in services["api"]["environment"]


@pytest.mark.service  # `nst api` and `nst webhooks`, installed as the image does
@pytest.mark.slow  # a pip install into a fresh virtual environment
def test_api_image_commands_work_in_a_fresh_venv_without_torch(
    tmp_path: Path, project_copy: Path, redis_url: str
) -> None:
    runs, cmd = dockerfile_commands("Dockerfile.api")
    assert runs == ['pip install ".[api]"'] and cmd[:2] == ["nst", "api"]
    bin_dir = make_venv(tmp_path / "venv", share_site_packages=False)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    installed = run_in(bin_dir, runs[0], env, project_copy)
    assert installed.returncode == 0, installed.stderr[-2000:]
    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], capture_output=True, cwd=tmp_path)
    assert no_torch.returncode != 0, "the API image must not carry torch"

    port = free_port()
    argv = [str(bin_dir / cmd[0]), *cmd[1:]]
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    api = subprocess.Popen(argv, cwd=tmp_path, env=env | {"NST_REDIS_URL": redis_url}, stderr=subprocess.PIPE)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", api, timeout=HANG)
        answer = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert answer.status_code == 503 and answer.json()["type"] == "/problems/no-workers"
        # The page and the docs' files are package data: an installed copy serves them too.
        for path in ("/", "/static/vendor/swagger-ui-bundle.js", "/static/vendor/redoc.standalone.js", "/docs"):
            assert httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 200, path
    finally:
        stop_processes([api])
    # The compose file's webhook deliverer runs from the same image: `nst webhooks`, no torch.
    log_path = tmp_path / "webhooks.log"
    with open(log_path, "wb") as log_file:
        webhooks = subprocess.Popen(
            [str(bin_dir / "nst"), "webhooks"], cwd=tmp_path, env=env | {"NST_REDIS_URL": redis_url},
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + HANG
        while " ready." not in log_path.read_text() and time.monotonic() < deadline:
            assert webhooks.poll() is None, log_path.read_text()
            time.sleep(0.3)
        assert " ready." in log_path.read_text(), log_path.read_text()
    finally:
        stop_processes([webhooks])


@pytest.mark.service  # `nst worker`, installed as the image does
@pytest.mark.slow  # a pip install into a fresh virtual environment
def test_worker_image_commands_work_in_a_fresh_venv(tmp_path: Path, project_copy: Path, redis_url: str) -> None:
    runs, cmd = dockerfile_commands("Dockerfile.worker")
    assert runs == ['pip install ".[worker]"', "nst fetch-weights"] and cmd == ["nst", "worker"]
    bin_dir = make_venv(tmp_path / "venv", share_site_packages=True)
    # No network here: the image downloads torchvision's weights; this run asks for random ones.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"NST_VGG_WEIGHTS": "random", "NST_REDIS_URL": redis_url, "NST_DEVICE": "cpu"}
    for command in runs:
        done = run_in(bin_dir, command, env, project_copy)
        assert done.returncode == 0, f"{command}: {done.stderr[-2000:]}"
    worker = subprocess.Popen([str(bin_dir / cmd[0]), *cmd[1:]], cwd=tmp_path, env=env, stderr=subprocess.DEVNULL)
    try:
        store = JobStore.from_url(redis_url, Settings().job_ttl_seconds)
        deadline = time.monotonic() + HANG
        while not store.worker_registry(10).live() and time.monotonic() < deadline:
            assert worker.poll() is None, "the worker exited"
            time.sleep(0.5)
        assert store.worker_registry(10).live(), "the worker never reported"
    finally:
        stop_processes([worker])
