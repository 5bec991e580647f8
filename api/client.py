"""`nst submit`: send a job (or a sweep of jobs) to a running service, follow it with a progress bar,
save the result (or the sweep's contact sheet)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from core.errors import CommandError
from core.progress_bar import ProgressBar, format_line

POLL_SECONDS = 1.0
FINAL = ("succeeded", "failed", "canceled")


def _problem_text(answer: httpx.Response) -> str:
    try:
        body = answer.json()
        return f"{answer.status_code} {body.get('title', '')}: {body.get('detail', '')}"
    except ValueError:
        return f"{answer.status_code} {answer.text[:200]}"


def submit_and_follow(
    server: str,
    content: Path,
    styles: list[Path],
    params: str | None,
    wait: bool,
    output: Path | None,
    stream: TextIO,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Submit; print the job id on stdout (for scripts); with `wait`, follow it to its end."""
    out = out or sys.stdout
    server = server.rstrip("/")
    try:
        files = [("content", (content.name, content.read_bytes()))]
        files += [("style", (path.name, path.read_bytes())) for path in styles]
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    try:
        # A service with API keys (NST_API_KEYS_FILE) wants one on every /jobs request.
        key = os.environ.get("NST_API_KEY", "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=server, timeout=60, headers=headers) as client:
            answer = client.post("/jobs", files=files, data={"params": params} if params else None)
            if answer.status_code != 202:
                raise CommandError(f"submission refused: {_problem_text(answer)}")
            job: dict[str, Any] = answer.json()
            out.write(job["id"] + "\n")
            out.flush()
            stream.write(f"job {job['id']} queued: {server}/jobs/{job['id']}\n")
            if not wait:
                return job
            job = _follow(client, job, stream)
            if job["status"] != "succeeded":
                error = job.get("error") or {}
                raise CommandError(f"job {job['status']}: {error.get('detail', 'no detail')}")
            if output is not None:
                result = client.get(f"/jobs/{job['id']}/result")
                if result.status_code != 200:
                    raise CommandError(f"cannot fetch the result: {_problem_text(result)}")
                output.write_bytes(result.content)
                stream.write(f"saved {output}\n")
            return job
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {server}: {exc}") from exc


def submit_sweep_and_follow(
    server: str,
    content: Path,
    styles: list[Path],
    params: str | None,
    grid: str | None,
    each_style: bool,
    wait: bool,
    output: Path | None,
    stream: TextIO,
    out: TextIO | None = None,
) -> dict[str, Any]:
    """Submit a sweep (POST /sweeps: a job per cell of `grid`, and/or per style with `each_style`);
    print its id on stdout; with `wait`, follow it to its end, and save its contact sheet to `output`."""
    out = out or sys.stdout
    server = server.rstrip("/")
    try:
        files = [("content", (content.name, content.read_bytes()))]
        files += [("style", (path.name, path.read_bytes())) for path in styles]
    except OSError as exc:
        raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    data = {"params": params or "", "grid": grid or "", "each_style": "true" if each_style else "false"}
    try:
        key = os.environ.get("NST_API_KEY", "").strip()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=server, timeout=120, headers=headers) as client:
            answer = client.post("/sweeps", files=files, data=data)
            if answer.status_code != 202:
                raise CommandError(f"sweep refused: {_problem_text(answer)}")
            sweep: dict[str, Any] = answer.json()
            out.write(sweep["id"] + "\n")
            out.flush()
            stream.write(f"sweep {sweep['id']} queued, {len(sweep['jobs'])} jobs: {server}/sweeps/{sweep['id']}\n")
            if not wait:
                return sweep
            sweep = _follow_sweep(client, sweep, stream)
            if output is not None:
                sheet = client.get(f"/sweeps/{sweep['id']}/sheet")
                if sheet.status_code != 200:
                    raise CommandError(f"cannot fetch the contact sheet: {_problem_text(sheet)}")
                output.write_bytes(sheet.content)
                stream.write(f"saved {output}\n")
            ended = {status: n for status, n in sweep["counts"].items() if n and status != "succeeded"}
            if ended:
                listed = ", ".join(f"{n} {status}" for status, n in ended.items())
                raise CommandError(f"sweep {sweep['status']}: {listed} of {len(sweep['jobs'])} jobs")
            return sweep
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach {server}: {exc}") from exc


def _follow_sweep(client: httpx.Client, sweep: dict[str, Any], stream: TextIO) -> dict[str, Any]:
    total = len(sweep["jobs"])
    bar = ProgressBar(stream, total)
    last = ""
    while sweep["status"] not in ("finished", "canceled"):
        time.sleep(POLL_SECONDS)
        answer = client.get(f"/sweeps/{sweep['id']}")
        if answer.status_code != 200:
            raise CommandError(f"lost the sweep: {_problem_text(answer)}")
        sweep = answer.json()
        counts = sweep["counts"]
        ended = sum(counts.get(status, 0) for status in (*FINAL, "gone"))
        line = f"{ended}/{total} jobs ended ({counts.get('running', 0)} running, {counts.get('queued', 0)} queued)"
        bar.show(line, line != last)
        last = line
    bar.close()
    return sweep


def _follow(client: httpx.Client, job: dict[str, Any], stream: TextIO) -> dict[str, Any]:
    bar = ProgressBar(stream, job["progress"]["total"])
    seen_snapshots = 0
    while job["status"] not in FINAL:
        time.sleep(POLL_SECONDS)
        answer = client.get(f"/jobs/{job['id']}")
        if answer.status_code != 200:
            raise CommandError(f"lost the job: {_problem_text(answer)}")
        job = answer.json()
        if job["status"] == "queued":
            bar.show(f"queued, position {job['queue_position']}", False)
            continue
        losses = job["losses"]
        line = format_line(
            job["progress"]["iteration"],
            job["progress"]["total"],
            (losses["total"], losses["content"], losses["style"]) if losses else None,
            None,
            job["eta_seconds"],
        )
        bar.show(line, len(job["snapshots"]) > seen_snapshots or job["status"] in FINAL)
        seen_snapshots = len(job["snapshots"])
    bar.close()
    return job
