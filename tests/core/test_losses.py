"""The loss terms against values computed by hand on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from core.losses import content_loss, gram, style_loss, style_target_gram, total_variation


def two_by_one() -> torch.Tensor:
    # C=2 channels, H=1, W=2: channel 0 = [1, 2], channel 1 = [3, 4].
    return torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])


def test_gram_is_unnormalised_channel_inner_products() -> None:
    # (H*W) x C matrix F = [[1, 3], [2, 4]]; F^T F = [[1+4, 3+8], [3+8, 9+16]].
    assert torch.equal(gram(two_by_one()), torch.tensor([[5.0, 11.0], [11.0, 25.0]]))


def test_content_loss_is_half_the_mean_squared_difference() -> None:
    target = torch.zeros(1, 2, 1, 2)
    # 0.5 * mean(1, 4, 9, 16) = 0.5 * 7.5
    assert content_loss(two_by_one(), target).item() == pytest.approx(3.75)


def test_style_loss_divides_the_mean_by_hwc_squared_without_a_two() -> None:
    target = torch.zeros(2, 2)
    # mean(25, 121, 121, 625) / (1 * 2 * 2)^2 = 223 / 16
    assert style_loss(two_by_one(), target).item() == pytest.approx(223 / 16)


def test_style_loss_is_zero_at_the_target() -> None:
    f = torch.randn(1, 8, 5, 7)
    assert style_loss(f, gram(f)).item() == pytest.approx(0.0, abs=1e-6)


def test_style_target_gram_rescales_to_the_working_positions() -> None:
    f = two_by_one()
    assert torch.equal(style_target_gram(f, 2), gram(f))  # same size: the seed's target exactly
    assert torch.equal(style_target_gram(f, 8), 4 * gram(f))


def test_total_variation_sums_the_two_directions() -> None:
    x = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # rows: (2-0)^2, (4-1)^2 -> mean 6.5; columns: (1-0)^2, (4-2)^2 -> mean 2.5
    assert total_variation(x).item() == pytest.approx(9.0)


def test_losses_are_fp32_even_for_bf16_features() -> None:
    f = two_by_one().to(torch.bfloat16)
    assert gram(f).dtype == torch.float32
    assert style_loss(f, torch.zeros(2, 2)).dtype == torch.float32
