"""The total loss of one job: one VGG pass over the image yields every loss term.

`LossFunction` takes the targets as inputs rather than holding them, so that one compiled
version serves every job of the same working size (core.engine caches it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.losses import content_loss, style_loss, style_target_gram, total_variation
from core.params import StyleLossKind, StyleParams
from core.vgg import VGGFeatures
from core.w2 import feature_moments, w2_loss, w2_target

# Order of the loss terms in the tensor the objective returns.
LOSS_TERMS: tuple[str, ...] = ("total", "content", "style", "tv")

# Tensors per style layer in the targets: a Gram, or W2's mean, covariance and its square root.
STYLE_TARGET_PARTS: dict[StyleLossKind, int] = {"gram": 1, "w2": 3}
STYLE_LOSSES: dict[StyleLossKind, Callable[..., torch.Tensor]] = {"gram": style_loss, "w2": w2_loss}

Targets = tuple[list[torch.Tensor], list[torch.Tensor]]  # content feature maps, style targets (flat)


class LossFunction(nn.Module):
    """L = alpha * L_content + beta * L_style + tv_weight * L_tv, returned with its parts.

    The seed runs the network twice an iteration (once per loss); one pass through the union of
    the layers computes the same numbers. With `bf16`, the convolutions run in bfloat16 under
    autocast while the Grams and losses stay fp32 (core.losses).
    """

    def __init__(self, extractor: VGGFeatures, params: StyleParams, bf16: bool = False) -> None:
        super().__init__()
        self.extractor = extractor
        self.content_count = len(params.content_layers)
        self.content_layer_weights = tuple(params.content_layer_weights)
        self.style_layer_weights = tuple(params.style_layer_weights)
        self.alpha = params.content_weight
        self.beta = params.style_weight
        self.tv_weight = params.tv_weight
        self.style_kind: StyleLossKind = params.style_loss
        self.bf16 = bf16

    def forward(
        self, x: torch.Tensor, content_targets: list[torch.Tensor], style_targets: list[torch.Tensor]
    ) -> torch.Tensor:
        """A 4-vector (total, content, style, tv), fp32, without leaving the device."""
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            maps = self.extractor(x)
        return self.terms(x, maps, content_targets, style_targets, self.alpha, self.beta, self.tv_weight)

    def terms(
        self,
        x: torch.Tensor,
        maps: Sequence[torch.Tensor],
        content_targets: list[torch.Tensor],
        style_targets: list[torch.Tensor],
        alpha: float | torch.Tensor,
        beta: float | torch.Tensor,
        tv_weight: float | torch.Tensor,
    ) -> torch.Tensor:
        """The loss terms of one image from its feature maps (a batched pass hands each image its
        slice of the maps, and its own weights: core.batch)."""
        zero = x.new_zeros((), dtype=torch.float32)
        content = zero
        for weight, f, target in zip(
            self.content_layer_weights, maps[: self.content_count], content_targets, strict=True
        ):
            content = content + weight * content_loss(f, target)
        style = zero
        parts = STYLE_TARGET_PARTS[self.style_kind]
        layer_loss = STYLE_LOSSES[self.style_kind]
        for i, (weight, f) in enumerate(zip(self.style_layer_weights, maps[self.content_count :], strict=True)):
            layer_targets = style_targets[i * parts : (i + 1) * parts]
            if self.extractor.checkpointing and f.requires_grad:
                # The statistics' fp32 copy of a bf16 map is made again in the backward, not kept.
                style = style + weight * checkpoint(layer_loss, f, *layer_targets, use_reentrant=False)
            else:
                style = style + weight * layer_loss(f, *layer_targets)
        uses_tv = isinstance(tv_weight, torch.Tensor) or tv_weight > 0
        tv = total_variation(x) if uses_tv else zero
        total = alpha * content + beta * style + tv_weight * tv
        return torch.stack([total, content, style, tv])


class BatchLoss(nn.Module):
    """The loss terms of several images in one network pass: (B, 4), a row per image.

    The images share the network (core.batching says when they may); each brings its own
    targets and (alpha, beta, tv_weight). Convolutions treat the images of a batch apart, so a
    row is its image's terms as LossFunction computes them alone, up to the kernels' rounding.
    """

    def __init__(self, objective: LossFunction) -> None:
        super().__init__()
        self.objective = objective

    def forward(
        self,
        xs: list[torch.Tensor],
        content_targets: list[list[torch.Tensor]],
        style_targets: list[list[torch.Tensor]],
        weights: list[tuple[float | torch.Tensor, float | torch.Tensor, float | torch.Tensor]],
    ) -> torch.Tensor:
        objective = self.objective
        x = torch.cat(xs) if len(xs) > 1 else xs[0]
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=objective.bf16):
            maps = objective.extractor(x)
        rows = [
            objective.terms(xs[i], [f[i : i + 1] for f in maps], content_targets[i], style_targets[i], *weights[i])
            for i in range(len(xs))
        ]
        return torch.stack(rows)


@torch.no_grad()
def compute_targets(
    extractor: VGGFeatures,
    params: StyleParams,
    content: torch.Tensor,
    styles: Sequence[torch.Tensor],
    blend_weights: Sequence[float],
) -> Targets:
    """The content's feature maps and the blended style targets, in fp32 (computed once a stage):
    a Gram per style layer, or with `style_loss: "w2"` three tensors per layer (core.w2)."""
    count = len(params.content_layers)
    content_maps = extractor(content)
    content_targets = [f.float().contiguous() for f in content_maps[:count]]
    if params.style_loss == "w2":
        # Each style's moments per layer (C + C*C numbers), then mixed: its maps are not kept.
        moments = [[feature_moments(f) for f in extractor(style)[count:]] for style in styles]
        per_layer = zip(*moments, strict=True)
        return content_targets, [part for layer in per_layer for part in w2_target(layer, blend_weights)]
    # Grams are compared at the working image's size, which the content image has.
    positions = [f.shape[2] * f.shape[3] for f in content_maps[count:]]
    style_targets = [torch.zeros((f.shape[1], f.shape[1]), device=content.device) for f in content_maps[count:]]
    for style, blend in zip(styles, blend_weights, strict=True):
        for i, (f, n) in enumerate(zip(extractor(style)[count:], positions, strict=True)):
            style_targets[i] = style_targets[i] + blend * style_target_gram(f, n)
    return content_targets, style_targets
