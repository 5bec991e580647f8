"""The seed's own optimisation loop, kept as the yardstick for the engine's speed.

Written out as the seed runs it: two forward passes an iteration (one to the content layer, one
to the deepest style layer), fp32, explicit input normalisation, and the best image chosen on the
host after every iteration. bench/speed.py times it beside `core.stylize`; `nst doctor` calls
`seed_loop_ms_per_iteration` for its table.

The weights are random (`core.weights.random_state_dict`, the same in every process): the time
an iteration takes does not depend on the weights' values, only on the layers' shapes, so no
trained weights are needed to measure it.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from core.layers import LAYER_INDEX
from core.losses import content_loss, gram, style_loss
from core.params import StyleParams
from core.transfer import initial_image
from core.vgg import build_features, seed_to_torchvision
from core.weights import random_state_dict


class SeedObjective:
    """The seed's loss, computed its way: a content pass and a style pass, fp32."""

    def __init__(self, params: StyleParams, content: torch.Tensor, style: torch.Tensor, device: torch.device) -> None:
        state = random_state_dict()
        self.content_net = build_features(state, depth=LAYER_INDEX[params.content_layers[-1]] + 1).to(device)
        self.style_net = build_features(state, depth=LAYER_INDEX[params.style_layers[-1]] + 1).to(device)
        self.params = params
        with torch.no_grad():
            self.content_targets = self.taps(self.content_net, content, params.content_layers)
            self.style_targets = [gram(f) for f in self.taps(self.style_net, style, params.style_layers)]

    @staticmethod
    def taps(net: nn.Sequential, x: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
        wanted = {LAYER_INDEX[n]: n for n in names}
        found = {}
        h = seed_to_torchvision(x)
        for index, module in enumerate(net):
            h = module(h)
            if index in wanted:
                found[wanted[index]] = h
        return [found[n] for n in names]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        p = self.params
        content = x.new_zeros(())
        features = self.taps(self.content_net, x, p.content_layers)  # pass 1
        for w, f, t in zip(p.content_layer_weights, features, self.content_targets, strict=True):
            content = content + w * content_loss(f, t)
        style = x.new_zeros(())
        features = self.taps(self.style_net, x, p.style_layers)  # pass 2
        for w, f, t in zip(p.style_layer_weights, features, self.style_targets, strict=True):
            style = style + w * style_loss(f, t)
        return p.content_weight * content + p.style_weight * style


def run_reference(objective: SeedObjective, x0: torch.Tensor, params: StyleParams) -> tuple[torch.Tensor, float]:
    """`params.iterations` Adam steps from `x0`: the best image and the seconds per iteration,
    the first iteration left out of the timing."""
    x = x0.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=params.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    best_loss, best = math.inf, x.detach().clone()
    start = None
    for iteration in range(1, params.iterations + 1):
        if iteration == 2:  # the first iteration pays for allocation and kernel choice
            synchronize(x.device)
            start = time.perf_counter()
        optimizer.zero_grad()
        loss = objective(x)
        torch.autograd.backward(loss)  # what Tensor.backward does (that one is unannotated)
        if loss.item() < best_loss:  # the seed decides on the host, every iteration
            best_loss, best = loss.item(), x.detach().clone()
        optimizer.step()
    synchronize(x.device)
    assert start is not None
    return best, (time.perf_counter() - start) / (params.iterations - 1)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_loop_ms_per_iteration(
    content: torch.Tensor, style: torch.Tensor, params: StyleParams, device: torch.device, iterations: int
) -> float:
    """Milliseconds per iteration of the seed's loop on `device` at the tensors' size.

    `content` and `style` are (1, 3, H, W) in seed space (`core.images.to_seed_space`, as
    bench/speed.py builds them), on any device; the start image is `params`' own. `iterations`
    must be at least 2: the first one is not timed. Random weights (see the module's docstring).
    """
    if iterations < 2:
        raise ValueError(f"iterations must be at least 2 (the first is not timed), not {iterations}")
    content, style = content.to(device), style.to(device)
    run = params.model_copy(update={"iterations": iterations})
    objective = SeedObjective(run, content, style, device)
    x0 = initial_image(run, content, style, run.seed or 0).to(device)
    _, seconds = run_reference(objective, x0, run)
    return seconds * 1e3
