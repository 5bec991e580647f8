"""The seed's losses, written as its code computes them, plus total variation.

Grams and losses are always computed in fp32: fp16 Grams overflow, and a bf16
forward pass must not round the quantities the optimiser compares.
"""

from __future__ import annotations

import torch


def gram(features: torch.Tensor) -> torch.Tensor:
    """Unnormalised Gram matrix G = F^T F of a (1, C, H, W) map reshaped to (H*W) x C."""
    channels = features.shape[1]
    # Outside autocast, or the product would be taken in bf16.
    with torch.autocast(device_type=features.device.type, enabled=False):
        if (
            features.dim() == 4
            and not features.is_contiguous()
            and features.is_contiguous(memory_format=torch.channels_last)
        ):
            flat = features.float().permute(0, 2, 3, 1).reshape(-1, channels)  # (H*W, C): a view, no copy
            return flat.T @ flat
        flat = features.float().reshape(channels, -1)
        return flat @ flat.T


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """0.5 * mean of squared differences over every element of the feature map."""
    return 0.5 * (features.float() - target).pow(2).mean()


def style_loss(features: torch.Tensor, target_gram: torch.Tensor) -> torch.Tensor:
    """mean((G(x) - G_target)^2) / (H*W*C)^2: the seed's code, which has no factor 2."""
    _, channels, height, width = features.shape
    norm = float(height * width * channels) ** 2
    return (gram(features) - target_gram).pow(2).mean() / norm


def style_target_gram(style_features: torch.Tensor, positions: int) -> torch.Tensor:
    """The style image's Gram, rescaled to `positions` (H*W of the image being optimised).

    An unnormalised Gram grows with the number of positions; when the style image is the working
    size (the seed), the factor is 1 and this is the seed's target exactly. With `style_scale`
    the style map has another size, and the factor keeps the target comparable.
    """
    _, _, height, width = style_features.shape
    return gram(style_features) * (positions / float(height * width))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between neighbouring pixels, across rows plus across columns."""
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    return dy.float().pow(2).mean() + dx.float().pow(2).mean()
