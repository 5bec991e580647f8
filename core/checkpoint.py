"""The state of a run between two iterations, so that a crashed job resumes where it was.

Resuming from a checkpoint computes exactly what the uninterrupted run would have: the image,
the optimiser's state (Adam's moments and step count, or L-BFGS's history), the best image so
far and, with `average`, the averaged image are all in it. One exception: an L-BFGS history over
MAX_LBFGS_HISTORY_BYTES (2 x lbfgs_history image-sized vectors: 470 MB at 384x512 with the
default 100) is left out, since a Redis value holds at most 512 MB and copying it out every few
hundred iterations would cost more than it saves; a run resumed from such a checkpoint starts
its L-BFGS history afresh (its loss scale is kept), and its result differs slightly.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch

from core.averaging import ImageAverage
from core.optimizers import LOSS_SCALE

MAX_LBFGS_HISTORY_BYTES = 128 * 1024 * 1024


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a (nested) state."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(v) for v in value)
    return 0


def optimizer_state_for_checkpoint(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimiser's state_dict, without an L-BFGS history too big to keep (module docstring)."""
    state = optimizer.state_dict()
    if not isinstance(optimizer, torch.optim.LBFGS) or tensor_bytes(state["state"]) <= MAX_LBFGS_HISTORY_BYTES:
        return state
    kept = {index: {k: v for k, v in entry.items() if k == LOSS_SCALE} for index, entry in state["state"].items()}
    return {**state, "state": kept}


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
            optimizer_state=_to_cpu(optimizer_state_for_checkpoint(optimizer)),
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
