"""The total loss of one job as a module: one VGG pass over the image yields every loss term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.losses import content_loss, style_loss, style_target_gram, total_variation
from core.params import StyleParams
from core.vgg import VGGFeatures

# Order of the loss terms in the tensor the objective returns.
LOSS_TERMS: tuple[str, ...] = ("total", "content", "style", "tv")


class StyleObjective(nn.Module):
    """L = alpha * L_content + beta * L_style + tv_weight * L_tv, returned with its parts.

    The seed runs the network twice an iteration (once per loss); one pass through the union of
    the layers computes the same numbers.
    """

    def __init__(
        self,
        extractor: VGGFeatures,
        params: StyleParams,
        content: torch.Tensor,
        styles: Sequence[torch.Tensor],
        blend_weights: Sequence[float],
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.content_count = len(params.content_layers)
        self.content_layer_weights = tuple(params.content_layer_weights)
        self.style_layer_weights = tuple(params.style_layer_weights)
        self.alpha = params.content_weight
        self.beta = params.style_weight
        self.tv_weight = params.tv_weight
        with torch.no_grad():
            content_maps = extractor(content)
            self.content_targets = [f.detach().float() for f in content_maps[: self.content_count]]
            # Grams are compared at the working image's size, which the content image has.
            positions = [f.shape[2] * f.shape[3] for f in content_maps[self.content_count :]]
            self.style_targets = [torch.zeros(()) for _ in positions]
            for style, blend in zip(styles, blend_weights, strict=True):
                style_maps = extractor(style)[self.content_count :]
                for i, (f, n) in enumerate(zip(style_maps, positions, strict=True)):
                    self.style_targets[i] = self.style_targets[i] + blend * style_target_gram(f, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-vector (total, content, style, tv), fp32, without leaving the device."""
        maps = self.extractor(x)
        zero = x.new_zeros((), dtype=torch.float32)
        content = zero
        for weight, f, target in zip(
            self.content_layer_weights, maps[: self.content_count], self.content_targets, strict=True
        ):
            content = content + weight * content_loss(f, target)
        style = zero
        for weight, f, target in zip(
            self.style_layer_weights, maps[self.content_count :], self.style_targets, strict=True
        ):
            style = style + weight * style_loss(f, target)
        tv = total_variation(x) if self.tv_weight > 0 else zero
        total = self.alpha * content + self.beta * style + self.tv_weight * tv
        return torch.stack([total, content, style, tv])
