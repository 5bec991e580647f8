"""The state of a run between two iterations, so that a crashed job resumes where it was.

Resuming from a checkpoint computes exactly what the uninterrupted run would have: the image,
the optimiser's state (Adam's moments and step count, or L-BFGS's history), the best image so
far and, with `average`, the averaged image are all in it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from core.averaging import ImageAverage


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


@dataclass(frozen=True)
class Checkpoint:
    iteration: int  # iterations completed; the resumed run starts at iteration + 1
    image: torch.Tensor  # (1, 3, H, W), seed space, after `iteration` optimiser steps
    optimizer_state: dict[str, Any]
    best_image: torch.Tensor
    best_losses: torch.Tensor
    best_iteration: int
    seed: int
    average: torch.Tensor | None = None  # the uncorrected moving average of the image, with `average`
    average_count: int = 0  # samples in it

    @classmethod
    def capture(
        cls,
        iteration: int,
        image: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        best_image: torch.Tensor,
        best_losses: torch.Tensor,
        best_iteration: torch.Tensor,
        seed: int,
        average: ImageAverage | None = None,
    ) -> Checkpoint:
        return cls(
            iteration=iteration,
            image=_to_cpu(image),
            optimizer_state=_to_cpu(optimizer.state_dict()),
            best_image=_to_cpu(best_image),
            best_losses=_to_cpu(best_losses),
            best_iteration=int(best_iteration.item()),
            seed=seed,
            average=_to_cpu(average.value) if average is not None else None,
            average_count=average.count if average is not None else 0,
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.__dict__, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        fields = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(**fields)
