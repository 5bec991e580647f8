"""The optimisers of a run: Adam (the seed's) and L-BFGS (jcjohnson/neural-style's default).

One iteration is one optimiser step with one evaluation of the loss for both. L-BFGS runs as
crowsonkb/style-transfer-pytorch runs it: torch.optim.LBFGS with max_iter=1 and no line search,
so a step evaluates the loss once; its history defaults to jcjohnson's 100 (`lbfgs_history`),
and its learning rate is 1, as in every anchor (`learning_rate` is Adam's). The loop evaluates
the loss itself (to keep the best image and report it) and hands that evaluation to L-BFGS,
scaled by a factor fixed per stage (`lbfgs_loss_scale` says why).

Between the scales of a coarse-to-fine run, Adam's moments are resized with the image (as
crowsonkb's scale_adam); L-BFGS starts afresh, since its history holds steps of another size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from core.decode import Size
from core.params import StyleParams

# MATLAB adamupdate's defaults, which the seed uses.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
LBFGS_LR = 1.0
LOSS_SCALE = "nst_loss_scale"  # our entry in L-BFGS's state (core.optimizers.lbfgs_loss_scale)


def make_optimizer(params: StyleParams, x: torch.Tensor) -> torch.optim.Optimizer:
    if params.optimizer == "lbfgs":
        # Tolerances of -1, as jcjohnson's tolX/tolFun and neural-style-pt: a step is always taken
        # (the defaults skip steps whose gradient is small in absolute terms, which pixel-space
        # gradients of a small loss are).
        return torch.optim.LBFGS(
            [x],
            lr=LBFGS_LR,
            max_iter=1,
            history_size=params.lbfgs_history,
            tolerance_grad=-1.0,
            tolerance_change=-1.0,
        )
    return torch.optim.Adam([x], lr=params.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS, fused=x.device.type == "cuda")


def image_layout(params: StyleParams, layout: torch.memory_format) -> torch.memory_format:
    """The optimised image's memory layout: L-BFGS flattens the gradient with .view(-1), which
    needs a contiguous tensor (the network still runs channels_last from the first convolution)."""
    return torch.contiguous_format if params.optimizer == "lbfgs" else layout


class _Evaluated:
    """The closure L-BFGS asks for: the loss the loop has already computed and differentiated."""

    def __init__(self, loss: torch.Tensor) -> None:
        self.loss: torch.Tensor | None = loss

    def __call__(self) -> torch.Tensor:
        if self.loss is None:  # max_iter=1 without a line search evaluates once
            raise RuntimeError("L-BFGS asked for a second evaluation in one step")
        loss, self.loss = self.loss, None
        return loss


def take_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One step from the gradient already in place (`loss` is the value it belongs to)."""
    if not isinstance(optimizer, torch.optim.LBFGS):
        optimizer.step()
        return
    (x,) = optimizer.param_groups[0]["params"]
    assert x.grad is not None
    state = optimizer.state[x]  # saved and restored with the rest of L-BFGS's state
    if LOSS_SCALE not in state:
        state[LOSS_SCALE] = lbfgs_loss_scale(x.grad)
    scale = state[LOSS_SCALE]
    x.grad = x.grad * scale  # a new tensor: the compiled backward's output is left as it was
    optimizer.step(_Evaluated(loss * scale))  # type: ignore[no-untyped-call]  # torch leaves LBFGS.step unannotated


def lbfgs_loss_scale(grad: torch.Tensor) -> float:
    """The factor that makes a stage's first gradient 1 per pixel value on average.

    torch's L-BFGS (like the Lua optim one jcjohnson uses) keeps a curvature pair only when
    y.s > 1e-10, an absolute threshold: the seed's losses (style Grams over (HWC)^2) have
    gradients of about 1e-4 per pixel value, whose pairs fall under it, and L-BFGS would then
    creep along the raw gradient. Its steps do not otherwise depend on the loss's scale, so it
    minimises the loss times this factor, fixed for the stage (a checkpoint keeps it).
    """
    mean = grad.detach().abs().float().mean().item()
    return 1.0 / mean if mean > 0 and math.isfinite(mean) else 1.0


def carry_state(
    params: StyleParams, state: dict[str, Any] | None, size: Size, layout: torch.memory_format
) -> dict[str, Any] | None:
    """The optimiser's state for the next scale: Adam's resized, L-BFGS's dropped."""
    if state is None or params.optimizer == "lbfgs":
        return None
    return resize_adam_state(state, size, layout)


def resize_adam_state(
    state: dict[str, Any], size: Size, layout: torch.memory_format = torch.contiguous_format
) -> dict[str, Any]:
    """Adam's moments resized with the image, so the next stage goes on where this one was: the
    first moment bicubic, the second bilinear and kept non-negative (it is a square). In the
    image's memory layout: fused Adam wants a parameter and its moments alike."""
    resized: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for key, moments in state["state"].items():
        moved = dict(moments)
        first = F.interpolate(moments["exp_avg"], size=size, mode="bicubic", align_corners=False)
        second = F.interpolate(moments["exp_avg_sq"], size=size, mode="bilinear", align_corners=False).clamp_(min=0)
        moved["exp_avg"] = first.contiguous(memory_format=layout)
        moved["exp_avg_sq"] = second.contiguous(memory_format=layout)
        resized["state"][key] = moved
    return resized
