"""Linear colour transfer: an image's colours given another's mean and covariance.

As ProGamerGov/Neural-Tools' linear-color-transfer.py (from leongatys/NeuralImageSynthesis):
the image's centred pixels x become A x + mu_ref, where A maps the image's colour covariance
C_i onto the reference's C_r (both with eps * I added), by one of three square roots:
- "pca":  A = sqrt(C_r) sqrt(C_i)^-1 (symmetric square roots, by eigendecomposition);
- "chol": A = L_r L_i^-1 (Cholesky factors);
- "sym":  A = sqrt(C_i)^-1 sqrt(sqrt(C_i) C_r sqrt(C_i)) sqrt(C_i)^-1, the one symmetric A.
Neural-Tools clips the result to 0..1 because it writes a file; here the result feeds the
network as floats, so it is not clipped and its statistics are the reference's exactly.
The 3x3 algebra runs in float64 on the CPU; the pixels stay on their device in fp32.
"""

from __future__ import annotations

import torch

from core.params import ColorMatchKind

COLOR_EPS = 1e-5  # Neural-Tools' default, for pixels in 0..1
PIXEL_RANGE = 255.0  # the seed's space spans 0..255: eps scales by its square there


def color_moments(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel means (3,) and covariance (3, 3) of a (1, 3, H, W) image, float64 on the CPU."""
    flat = image.detach()[0].reshape(3, -1).float()
    mean = flat.mean(dim=1)
    centred = flat - mean[:, None]
    cov = (centred @ centred.T) / flat.shape[1]
    return mean.double().cpu(), cov.double().cpu()


def _sqrt_sym(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    root: torch.Tensor = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T  # `@` is untyped in torch
    return root


def color_transform(image_cov: torch.Tensor, reference_cov: torch.Tensor, mode: ColorMatchKind) -> torch.Tensor:
    """The 3x3 matrix A with A C_i A^T = C_r (float64), for `mode`."""
    transform: torch.Tensor  # declared: torch leaves `@` untyped
    if mode == "chol":
        transform = torch.linalg.cholesky(reference_cov) @ torch.linalg.inv(torch.linalg.cholesky(image_cov))
        return transform
    root_i = _sqrt_sym(image_cov)
    if mode == "pca":
        transform = _sqrt_sym(reference_cov) @ torch.linalg.inv(root_i)
        return transform
    if mode == "sym":
        inverse = torch.linalg.inv(root_i)
        transform = inverse @ _sqrt_sym(root_i @ reference_cov @ root_i) @ inverse
        return transform
    raise ValueError(f"unknown colour matching mode {mode!r}")


def match_color(
    image: torch.Tensor, reference: torch.Tensor, mode: ColorMatchKind, eps: float = COLOR_EPS
) -> torch.Tensor:
    """`image` (1, 3, H, W) recoloured to `reference`'s channel mean and covariance; "none" returns
    it unchanged. `eps` is in the images' own units squared (pixels 0..1: Neural-Tools' 1e-5)."""
    if mode == "none":
        return image
    image_mean, image_cov = color_moments(image)
    reference_mean, reference_cov = color_moments(reference)
    eye = torch.eye(3, dtype=torch.float64)
    transform = color_transform(image_cov + eps * eye, reference_cov + eps * eye, mode)
    # A (x - mu_i) + mu_r = A x + (mu_r - A mu_i): one matrix product and a shift on the device.
    shift = reference_mean - transform @ image_mean
    weight = transform.to(device=image.device, dtype=torch.float32)
    bias = shift.to(device=image.device, dtype=torch.float32)
    flat = image[0].reshape(3, -1).float()
    out = (weight @ flat + bias[:, None]).reshape(1, *image.shape[1:])
    return out.contiguous(memory_format=_layout_of(image))


def match_seed_space(image: torch.Tensor, reference: torch.Tensor, mode: ColorMatchKind) -> torch.Tensor:
    """match_color for images in the seed's space (0..255 minus the channel mean), with
    Neural-Tools' eps brought to that range."""
    return match_color(image, reference, mode, eps=COLOR_EPS * PIXEL_RANGE**2)


def _layout_of(image: torch.Tensor) -> torch.memory_format:
    channels_last = not image.is_contiguous() and image.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format
