"""`nst doctor`: whether this machine can serve, and what its device measures.

It runs what a worker runs at start (load the weights, warm up, calibrate: core.calibration) and
adds what an operator asks first: the device and its memory, torch, CUDA and cuDNN, the weights
found, whether Redis and the object store answer, the seed's own loop against this engine at the
speed size, the memory model fitted against the written one, and the largest square job that
fits the budget. A table, or JSON with --json. Exit status 0 when the machine can serve, 1 with
the reasons when it cannot. Also `python -m worker.doctor` where the package is not installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("nst.doctor")

SEED_LOOP_ITERATIONS = 3  # timed after one untimed: the seed's loop is slow on a CPU


@dataclass
class Findings:
    facts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why the machine cannot serve


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    doctor = commands.add_parser(
        "doctor",
        help="check that this machine can serve: device, weights, Redis, object store, measured speed and memory",
        description="Run a worker's start-up measurements by hand and print what an operator needs: exit status "
        "0 when the machine can serve, 1 with the reasons when it cannot.",
    )
    add_arguments(doctor)
    doctor.set_defaults(handler=run_doctor)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: $NST_DEVICE or CUDA if available)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--json-file", default=None, help="also write the JSON to this file")
    parser.add_argument(
        "--speed-size", default=None, help="HEIGHTxWIDTH to time at (default: $NST_CALIBRATION_SPEED_SIZE, 384x512)"
    )
    parser.add_argument(
        "--memory-sides", default=None, help="square sides to measure memory at ($NST_CALIBRATION_MEMORY_SIDES)"
    )
    parser.add_argument("--no-seed-loop", action="store_true", help="leave out the seed's loop (slow on a CPU)")


def run_doctor(args: argparse.Namespace, stderr: TextIO) -> None:
    from core.errors import CommandError

    findings = examine(args)
    payload = {"ready": not findings.problems, "problems": findings.problems, **findings.facts}
    text = json.dumps(payload, indent=2, default=str)
    if args.json_file:
        Path(args.json_file).write_text(text + "\n")
    sys.stdout.write(text + "\n" if args.json else render(payload))
    sys.stdout.flush()
    if findings.problems:
        raise CommandError("this machine cannot serve: " + "; ".join(findings.problems))


def examine(args: argparse.Namespace) -> Findings:
    if args.device:
        os.environ["NST_DEVICE"] = args.device
    from core.errors import CommandError
    from jobs.settings import get_settings
    from worker.device_profile import speed_size

    get_settings.cache_clear()
    settings = get_settings()
    if args.speed_size:
        settings = settings.model_copy(update={"calibration_speed_size": args.speed_size})
    if args.memory_sides:
        settings = settings.model_copy(update={"calibration_memory_sides": args.memory_sides})
    settings = settings.model_copy(update={"calibrate": True})
    findings = Findings()
    start = time.perf_counter()
    device = _device(settings.device, findings)
    _redis(settings.redis_url, findings)
    _store(settings.blob_store, settings.blob_min_free_bytes, findings)
    try:
        size = speed_size(settings)
    except ValueError as exc:  # a bad --speed-size or --memory-sides
        raise CommandError(str(exc)) from exc
    if device is not None and _weights(settings.device, size, findings):
        _measure(settings, device, not args.no_seed_loop, findings)
    findings.facts["seconds"] = round(time.perf_counter() - start, 1)
    return findings


def _device(device_setting: str | None, findings: Findings) -> Any:
    import torch

    from core.device import resolve_device
    from core.memory import available_cpu_bytes

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,  # type: ignore[no-untyped-call]
    }
    findings.facts["versions"] = versions
    try:
        device = resolve_device(device_setting)
    except (ValueError, RuntimeError) as exc:
        findings.problems.append(f"device: {exc}")
        return None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        free, total = torch.cuda.mem_get_info(device)
        about = {
            "name": props.name, "memory_bytes": total, "free_bytes": free,
            "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
        }  # fmt: skip
    else:
        about = {
            "name": _cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "memory_bytes": _mem_total(), "free_bytes": available_cpu_bytes(),
        }  # fmt: skip
    findings.facts["device"] = {"device": str(device), **about}
    return device


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def _mem_total() -> int | None:
    from core.memory import meminfo_bytes

    return meminfo_bytes("MemTotal")


def _redis(url: str, findings: Findings) -> None:
    where = without_password(url)
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        info = client.info("server")
        memory = client.info("memory")
        client.close()
    except Exception as exc:  # not installed, refused, timed out, wrong password: the reason is the answer
        findings.facts["redis"] = {"url": where, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        findings.problems.append(f"Redis at {where} does not answer ({type(exc).__name__}: {exc})")
        return
    findings.facts["redis"] = {
        "url": where, "ok": True, "version": info.get("redis_version"),
        "maxmemory_bytes": memory.get("maxmemory"), "used_bytes": memory.get("used_memory"),
    }  # fmt: skip


def without_password(url: str) -> str:
    """A Redis URL as it may be printed: its password replaced."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def _store(url: str, min_free: int, findings: Findings) -> None:
    """Write, read back and remove a small object: reachability, credentials and the bucket at once."""
    probe = f"doctor/probe-{os.getpid()}"
    try:
        from jobs.blobs import BlobStore

        store = BlobStore(url, min_free)
        store.put(probe, b"nst doctor")
        if store.get(probe) != b"nst doctor":
            raise OSError("the probe object read back differs")
        store.delete([probe])
        free = store.free_bytes()
    except Exception as exc:  # not installed, unreachable, no such bucket, no permission
        findings.facts["store"] = {"url": url, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        findings.problems.append(f"the object store {url} cannot be written ({type(exc).__name__}: {exc})")
        return
    findings.facts["store"] = {"url": url, "ok": True, "kind": store.kind, "free_bytes": free}
    if free is not None and free < min_free:
        findings.problems.append(f"the object store's disk has {free} bytes free, under NST_BLOB_MIN_FREE_BYTES")


def _weights(device_setting: str | None, size: tuple[int, int], findings: Findings) -> bool:
    from core.weights import WeightsSource
    from worker.warmup import warm_up

    source = WeightsSource.from_env()
    start = time.perf_counter()
    try:
        warm_up(device_setting, size)  # loads them as a worker does, and compiles where it would
    except Exception as exc:  # missing file, no download, a bad file: a worker would stop here too
        findings.facts["weights"] = {"source": source.label, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        findings.problems.append(f"the VGG-19 weights ({source.label}) cannot be loaded: {exc}")
        return False
    findings.facts["weights"] = {
        "source": source.label, "ok": True, "warm_up_seconds": round(time.perf_counter() - start, 1),
        "note": "random weights: for tests, not style transfer" if source.kind == "random" else None,
    }  # fmt: skip
    return True


def _measure(settings: Any, device: Any, seed_loop: bool, findings: Findings) -> None:
    from core.memory import default_budget, describe_bytes, written_model
    from worker.device_profile import calibrate_device

    try:
        result = calibrate_device(settings)
    except ValueError as exc:  # a bad calibration setting
        findings.problems.append(str(exc))
        return
    findings.facts["calibration"] = {
        "precision": result.precision, "channels_last": result.channels_last, "seconds": round(result.seconds, 1),
        **result.report(), "precision_gap": result.precision_gap, "timings_ms": result.timings,
    }  # fmt: skip
    if result.ms_per_iteration is None:
        findings.problems.append("the engine could not run an iteration here: " + result.checks["speed"].detail)
    speed: dict[str, Any] = {"size": list(result.speed_size), "engine_ms": result.ms_per_iteration}
    if seed_loop:
        try:
            speed["seed_loop_ms"] = seed_loop_ms(device, result.speed_size)
        except Exception as exc:  # reported, not fatal: the engine is what serves
            speed["seed_loop_error"] = f"{type(exc).__name__}: {exc}"
        if speed.get("seed_loop_ms") and result.ms_per_iteration:
            speed["ratio"] = round(speed["seed_loop_ms"] / result.ms_per_iteration, 2)
    findings.facts["speed"] = speed
    budget = settings.memory_budget_bytes or default_budget(str(device))
    written = written_model("cuda" if device.type == "cuda" else "cpu", result.precision)
    findings.facts["memory"] = {
        "budget_bytes": budget,
        "budget": describe_bytes(budget),
        "model": result.model.report(),
        "written": written.report(),
        "largest_side": {
            "plain": largest_side(budget, result, checkpointing=False),
            "checkpointing": largest_side(budget, result, checkpointing=True),
        },
        "points": [_point(result, p) for p in result.peaks],
    }


def _point(result: Any, point: Any) -> dict[str, Any]:
    return {
        "size": list(point.size), "checkpointing": point.checkpointing, "counted_bytes": point.counted,
        "measured_bytes": point.measured, "estimate_bytes": round(_fitted(result, point)),
    }  # fmt: skip


def _fitted(result: Any, point: Any) -> float:
    constants = result.model.constants(point.checkpointing)
    return float(constants.scale * point.counted + constants.fixed)


def largest_side(budget: int, result: Any, *, checkpointing: bool) -> int:
    """The largest square working side whose job fits `budget` this way (the seed's layers)."""
    from core.memory import DeviceType, estimate_bytes
    from core.params import StyleParams

    params = StyleParams()
    device_type: DeviceType = "cuda" if result.device.startswith("cuda") else "cpu"

    def fits(side: int) -> bool:
        needed = estimate_bytes(
            (side, side), params, device_type=device_type, precision=result.precision, checkpointing=checkpointing,
            original=(side, side), model=result.model,
        )  # fmt: skip
        return needed <= budget

    low, high = 0, 1 << 17
    while low < high:  # the largest side that fits: needs grow with the side
        middle = (low + high + 1) // 2
        if fits(middle):
            low = middle
        else:
            high = middle - 1
    return low


def seed_loop_ms(device: Any, size: tuple[int, int]) -> float:
    """The seed's own loop (two passes, fp32) at `size` on `device`, ms an iteration."""
    from core.calibration import test_pair
    from core.images import to_seed_space
    from core.params import StyleParams
    from core.reference import seed_loop_ms_per_iteration

    content, style = test_pair(size)
    params = StyleParams(height=size[0], width=size[1], seed=0)
    return seed_loop_ms_per_iteration(
        to_seed_space(content, size).to(device),
        to_seed_space(style, size).to(device),
        params,
        device,
        SEED_LOOP_ITERATIONS + 1,
    )


def render(payload: dict[str, Any]) -> str:
    """The table an operator reads."""
    from core.memory import describe_bytes

    lines: list[str] = []
    device = payload.get("device", {})
    versions = payload.get("versions", {})
    memory_total = device.get("memory_bytes")
    lines.append(
        f"device     {device.get('device', '?')}: {device.get('name', '?')}"
        + (f", {describe_bytes(memory_total)}" if memory_total else "")
        + (f", {device['cores']} cores" if device.get("cores") else "")
    )
    lines.append(
        f"software   python {versions.get('python')}, torch {versions.get('torch')}, "
        f"CUDA {versions.get('cuda') or '-'}, cuDNN {versions.get('cudnn') or '-'}"
    )
    for name in ("weights", "redis", "store"):
        part = payload.get(name)
        if part is None:
            continue
        where = part.get("source") or part.get("url")
        state = "ok" if part.get("ok") else f"FAILED: {part.get('error')}"
        lines.append(f"{name:<10} {where}: {state}" + (f" ({part['note']})" if part.get("note") else ""))
    calibration = payload.get("calibration")
    if calibration:
        lines.append("")
        lines.append(f"{'check':<10} {'outcome':<9} detail")
        for what, check in calibration["calibration"].items():
            lines.append(f"{what:<10} {check['outcome']:<9} {check['detail']}")
        lines.append(
            f"serving    {calibration['precision']}, {'compiled' if calibration['compile'] else 'eager'}, "
            f"{'channels_last' if calibration['channels_last'] else 'contiguous'}; calibrated in "
            f"{calibration['seconds']} s"
        )
    speed = payload.get("speed")
    if speed:
        height, width = speed["size"]
        lines.append("")
        lines.append(f"ms per iteration at {height}x{width}")
        if "seed_loop_ms" in speed:
            lines.append(f"  {'the seed' + chr(39) + 's loop (two passes, fp32)':<36}{speed['seed_loop_ms']:>10.2f}")
        elif "seed_loop_error" in speed:
            lines.append(f"  the seed's loop: {speed['seed_loop_error']}")
        if speed.get("engine_ms") is not None:
            path = _path(calibration) if calibration else "?"
            lines.append(f"  {'this engine (' + path + ')':<36}{speed['engine_ms']:>10.2f}")
        if speed.get("ratio"):
            lines.append(f"  {'ratio':<36}{speed['ratio']:>9.2f}x")
    memory = payload.get("memory")
    if memory:
        lines.append("")
        lines.append(f"memory model ({memory['model']['source']})    scale      fixed   written scale      fixed")
        for mode in ("plain", "checkpointing"):
            fitted, written = memory["model"][mode], memory["written"][mode]
            lines.append(
                f"  {mode:<22} {fitted['scale']:>8.3f} {describe_bytes(fitted['fixed']):>10} "
                f"{written['scale']:>13.3f} {describe_bytes(written['fixed']):>10}"
            )
        sides = memory["largest_side"]
        lines.append(
            f"budget {memory['budget']}: the largest square working side is {sides['plain']} px plainly, "
            f"{sides['checkpointing']} px with checkpointing"
        )
    lines.append("")
    if payload["ready"]:
        lines.append(f"ready to serve (checked in {payload.get('seconds')} s)")
    else:
        lines.append("NOT ready to serve:")
        lines.extend(f"  - {problem}" for problem in payload["problems"])
    return "\n".join(lines) + "\n"


def _path(calibration: dict[str, Any]) -> str:
    return f"{calibration['precision']}, {'compiled' if calibration['compile'] else 'eager'}"


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.doctor`: the same command where the package (and so the `nst` entry
    point and its subcommands) is not installed, as on a bare GPU machine. Logs at INFO."""
    from core.errors import CommandError
    from core.logs import configure_logging

    configure_logging(logging.INFO, sys.stderr)
    parser = argparse.ArgumentParser(prog="python -m worker.doctor", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_doctor(args, sys.stderr)
    except (CommandError, ValueError, OSError, RuntimeError) as exc:
        sys.stderr.write(f"nst doctor: error: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
