"""`nst doctor` run as an operator runs it: a real Redis, a directory store, this machine's CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.services import HANG, RedisServer, free_port

SMALL = ["--speed-size", "32x32", "--memory-sides", "128,192"]  # seconds, not a minute, on this CPU


def doctor(args: list[str], redis_url: str, store: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "NST_REDIS_URL": redis_url, "NST_BLOB_STORE": str(store), "NST_VGG_WEIGHTS": "random", "NST_DEVICE": "cpu",
    }  # fmt: skip
    return subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=HANG, check=False)


def test_the_doctor_prints_its_table_and_says_the_machine_can_serve(redis_server: RedisServer, tmp_path: Path) -> None:
    nst = Path(sys.executable).parent / "nst"
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    done = doctor([str(nst), "doctor", *SMALL, "--json-file", str(tmp_path / "d.json")], url, tmp_path / "blobs")
    assert done.returncode == 0, done.stderr
    table = done.stdout
    for line in ("device     cpu:", f"redis      {url}: ok", "weights    random: ok", "ready to serve"):
        assert line in table, table
    assert "ms per iteration at 32x32" in table and "the seed's loop (two passes, fp32)" in table
    assert "memory model (" in table and "the largest square working side is" in table
    found = json.loads((tmp_path / "d.json").read_text())
    assert found["ready"] is True and found["problems"] == []
    assert found["versions"]["torch"] and found["device"]["cores"] == os.cpu_count()
    assert found["calibration"]["calibration"]["memory"]["calibrated"] is True
    assert found["speed"]["engine_ms"] > 0 and found["speed"]["seed_loop_ms"] > 0 and found["speed"]["ratio"] > 0
    sides = found["memory"]["largest_side"]
    assert 0 < sides["plain"] < sides["checkpointing"]  # checkpointing holds larger jobs in the same budget
    assert not list((tmp_path / "blobs").rglob("*probe*"))  # the store's probe object is removed


def test_without_redis_the_doctor_exits_1_saying_why(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    done = doctor([sys.executable, "-m", "worker.doctor", "--json", "--no-seed-loop", *SMALL], dead, tmp_path / "b")
    assert done.returncode == 1, done.stdout
    found = json.loads(done.stdout)
    assert found["ready"] is False and found["redis"]["ok"] is False and found["store"]["ok"] is True
    assert any("does not answer" in problem and dead in problem for problem in found["problems"])
    assert "cannot serve" in done.stderr and "does not answer" in done.stderr
    assert "seed_loop_ms" not in found["speed"]  # --no-seed-loop
