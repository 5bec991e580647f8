"""What this worker's device can run: its profile (device, precision, memory budget) for the
heartbeat and the API's admission, and how to tell an out-of-memory error from other failures."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from core.batching import BatchPolicy, setting_policy, written_policy
from core.calibration import CalibrationConfig, DeviceCalibration, calibrate, not_calibrated
from core.device import is_out_of_memory as is_out_of_memory  # where the runner found it
from core.memory import DeviceType, MemoryModel, Precision, default_budget, written_model
from jobs.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceProfile:
    """What a worker can run, as its heartbeat reports it and the API's admission reads it."""

    device: str
    device_type: DeviceType
    precision: Precision
    memory_budget_bytes: int
    compile: bool = False
    memory_model: MemoryModel | None = None  # None: the written constants
    calibration: DeviceCalibration | None = None  # what the worker measured at start
    batch: BatchPolicy | None = None  # None: the written policy for its device type

    def report(self) -> dict[str, object]:
        report: dict[str, object] = {
            "device": self.device,
            "device_type": self.device_type,
            "precision": self.precision,
            "memory_budget_bytes": self.memory_budget_bytes,
            "compile": self.compile,
            "memory_model": (self.memory_model or written_model(self.device_type, self.precision)).report(),
        }
        if self.calibration is not None:
            report |= self.calibration.report()
        report["batch"] = self.batch_policy.report()
        return report

    @property
    def batch_policy(self) -> BatchPolicy:
        return self.batch or written_policy(self.device_type)


def calibrate_device(settings: Settings) -> DeviceCalibration:
    """Measure this worker's device (NST_CALIBRATE) and serve with what it found from now on.
    A bad calibration setting stops the worker here, with its message."""
    from core.device import resolve_device
    from core.weights import WeightsSource

    device = resolve_device(settings.device)
    config = CalibrationConfig.parse(settings.calibration_speed_size, settings.calibration_memory_sides)
    if not settings.calibrate:
        return not_calibrated(device, "NST_CALIBRATE=0: the written constants and the defaults", config)
    result = calibrate(device, WeightsSource.from_env(), config)
    result.apply()
    log.info(
        "calibrated %s in %.1f s: serving %s, %s, %s",
        device, result.seconds, result.precision, "compiled" if result.compile else "eager",
        f"{result.ms_per_iteration:.1f} ms an iteration" if result.ms_per_iteration is not None else "speed unknown",
    )  # fmt: skip
    return result


def speed_size(settings: Settings) -> tuple[int, int]:
    """The working size the worker warms up and times at (NST_CALIBRATION_SPEED_SIZE)."""
    return CalibrationConfig.parse(settings.calibration_speed_size, settings.calibration_memory_sides).speed_size


def measure_profile(settings: Settings, calibration: DeviceCalibration | None = None) -> DeviceProfile:
    """The device and its budget: NST_MEMORY_BUDGET_BYTES, or 85% of what is free now (so it
    is measured once, after the network is loaded and calibrated, before any job holds memory)."""
    from core.device import resolve_device
    from core.engine import EngineOptions

    device = resolve_device(settings.device)
    budget = settings.memory_budget_bytes or default_budget(str(device))
    options = EngineOptions.for_device(device)  # after calibrate_device: what it decided
    model = calibration.model if calibration is not None else None
    device_type: DeviceType = "cuda" if device.type == "cuda" else "cpu"
    if settings.max_batch != "auto":
        batch = setting_policy(settings.max_batch)
    else:
        measured = calibration.batch if calibration is not None else None
        batch = measured or written_policy(device_type)
    return DeviceProfile(
        str(device), device_type, options.precision, budget, options.compile, model, calibration, batch
    )
