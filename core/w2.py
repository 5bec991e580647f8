"""The Wasserstein-2 style loss of crowsonkb/style-transfer-pytorch, written anew.

A layer's features are treated as samples of a Gaussian: their mean mu and covariance C over the
positions. The squared W2 distance between two Gaussians is
    |mu - mu_t|^2 + tr(C) + tr(C_t) - 2 tr(sqrtm(sqrtm(C_t) C sqrtm(C_t))),
here divided by the channel count (crowsonkb takes means over the channels rather than sums,
which keeps layers of 64 and 512 channels comparable). The matrix square roots are 12 coupled
Newton-Schulz iterations, differentiated by autograd through the iterations (crowsonkb writes a
Lyapunov backward by hand; autograd gives the exact gradient of the same approximation and
compiles with the rest). eps * I is added to both covariances, as crowsonkb does.

Several styles mix through their means and second moments (C + mu mu^T), the quantities that
combine linearly, weighted by the blend weights; the mixed covariance follows from those.
Everything here is fp32, also when the features come from a bf16 pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from core.losses import gram

NEWTON_SCHULZ_ITERATIONS = 12
W2_EPS = 1e-4


def sqrtm_newton_schulz(matrix: torch.Tensor, iterations: int = NEWTON_SCHULZ_ITERATIONS) -> torch.Tensor:
    """The square root of a symmetric positive definite (C, C) matrix by the coupled Newton-Schulz
    iteration (Higham), started from the matrix divided by its Frobenius norm so that it converges."""
    norm = matrix.pow(2).sum().sqrt()
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    y = matrix / norm
    z = eye
    for _ in range(iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y = y @ t
        z = t @ z
    return y * norm.sqrt()


def feature_moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and second raw moment (C, C) over the positions of a (1, C, H, W) map, fp32."""
    _, channels, height, width = features.shape
    with torch.autocast(device_type=features.device.type, enabled=False):
        mean = features.float().mean(dim=(2, 3)).reshape(channels)
        second = gram(features) / float(height * width)  # gram() handles either memory layout
    return mean, second


def covariance(mean: torch.Tensor, second: torch.Tensor, eps: float = W2_EPS) -> torch.Tensor:
    """C + eps * I from the mean and the second raw moment."""
    eye = torch.eye(mean.shape[0], dtype=mean.dtype, device=mean.device)
    return second - torch.outer(mean, mean) + eps * eye


Moments = tuple[torch.Tensor, torch.Tensor]  # a map's mean (C,) and second raw moment (C, C)


def w2_target(
    moments: Sequence[Moments], blend_weights: Sequence[float], eps: float = W2_EPS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's target (mean, covariance, its square root) for styles mixed by `blend_weights`
    (summing to 1): the weighted means of their means and of their second moments."""
    if not moments:
        raise ValueError("at least one style's moments are needed")
    mean = sum((w * m for (m, _), w in zip(moments, blend_weights, strict=True)), torch.zeros_like(moments[0][0]))
    second = sum((w * s for (_, s), w in zip(moments, blend_weights, strict=True)), torch.zeros_like(moments[0][1]))
    cov = covariance(mean, second, eps)
    return mean, cov, sqrtm_newton_schulz(cov)


def w2_loss(
    features: torch.Tensor,
    target_mean: torch.Tensor,
    target_cov: torch.Tensor,
    target_cov_sqrt: torch.Tensor,
    eps: float = W2_EPS,
) -> torch.Tensor:
    """Squared W2 distance between this map's Gaussian and the target's, over the channel count."""
    with torch.autocast(device_type=features.device.type, enabled=False):
        mean, second = feature_moments(features)
        cov = covariance(mean, second, eps)
        cross = sqrtm_newton_schulz(target_cov_sqrt @ cov @ target_cov_sqrt)
        mean_term = (mean - target_mean).pow(2).mean()
        cov_term = (torch.diagonal(target_cov) + torch.diagonal(cov) - 2.0 * torch.diagonal(cross)).mean()
        return mean_term + cov_term
