"""What this worker's device can run: its profile (device, precision, memory budget) for the
heartbeat and the API's admission, and how to tell an out-of-memory error from other failures."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.memory import DeviceType, Precision, default_budget
from jobs.settings import Settings


@dataclass(frozen=True)
class DeviceProfile:
    """What a worker can run, as its heartbeat reports it and the API's admission reads it."""

    device: str
    device_type: DeviceType
    precision: Precision
    memory_budget_bytes: int

    def report(self) -> dict[str, object]:
        return {
            "device": self.device,
            "device_type": self.device_type,
            "precision": self.precision,
            "memory_budget_bytes": self.memory_budget_bytes,
        }


def measure_profile(settings: Settings) -> DeviceProfile:
    """The device and its budget: NST_MEMORY_BUDGET_BYTES, or 85% of what is free now (so it
    is measured once, after the network is loaded and before any job holds memory)."""
    from core.device import resolve_device
    from core.engine import EngineOptions

    device = resolve_device(settings.device)
    budget = settings.memory_budget_bytes or default_budget(str(device))
    precision = EngineOptions.for_device(device).precision
    return DeviceProfile(str(device), "cuda" if device.type == "cuda" else "cpu", precision, budget)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA says OutOfMemoryError; the CPU allocator says RuntimeError "can't allocate memory"."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
