"""The network: layer names, pooling, truncation, frozen weights, folded normalisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import vgg19

from core.layers import LAYER_INDEX, conv_shapes
from core.vgg import build_features, fold_normalisation, seed_to_torchvision, vgg_extractor
from core.weights import WeightsSource, random_state_dict


@pytest.mark.parametrize(
    ("name", "index"),
    [("conv1_1", 0), ("relu1_1", 1), ("conv1_2", 2), ("pool1", 4), ("conv2_1", 5), ("conv3_1", 10),
     ("conv4_1", 19), ("conv4_2", 21), ("relu4_2", 22), ("conv5_1", 28), ("conv5_4", 34), ("pool5", 36)],
)  # fmt: skip
def test_layer_names_map_to_torchvision_indices(name: str, index: int) -> None:
    assert LAYER_INDEX[name] == index


def test_the_map_agrees_with_torchvision_modules() -> None:
    features = vgg19(weights=None).features
    for name, index in LAYER_INDEX.items():
        expected = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4]]
        assert isinstance(features[index], expected), name
    assert conv_shapes() == {k: tuple(v.shape) for k, v in features.state_dict().items()}


def test_max_pooling_gives_torchvisions_network_exactly() -> None:
    reference = vgg19(weights=None).features.eval()
    ours = build_features(reference.state_dict(), depth=29, pooling="max")
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(ours(x), reference[:29](x))


def test_average_pooling_replaces_every_max_pooling() -> None:
    features = build_features(random_state_dict(), depth=37, pooling="avg")
    pools = [m for m in features if isinstance(m, nn.AvgPool2d | nn.MaxPool2d)]
    assert len(pools) == 5
    assert all(isinstance(p, nn.AvgPool2d) and p.kernel_size == 2 and p.stride == 2 for p in pools)


def test_extractor_is_truncated_after_the_deepest_layer_and_frozen() -> None:
    extractor = vgg_extractor(["conv4_2", "conv1_1"], source=WeightsSource("random"))
    assert len(extractor.features) == LAYER_INDEX["conv4_2"] + 1
    assert not any(p.requires_grad for p in extractor.parameters())
    maps = extractor(torch.zeros(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [512, 64]  # in the order asked


def test_conv_layers_are_taken_before_their_relu() -> None:
    extractor = vgg_extractor(["conv1_1", "relu1_1"], source=WeightsSource("random"))
    conv, relu = extractor(torch.randn(1, 3, 16, 16) * 50)
    assert conv.min() < 0  # an in-place ReLU would have clipped it
    assert torch.equal(relu, conv.clamp(min=0))


def test_folded_normalisation_matches_explicit_normalisation() -> None:
    state = random_state_dict()
    explicit = build_features(state, depth=29, pooling="avg")
    folded = vgg_extractor(["conv1_1", "conv3_1", "conv5_1"], source=WeightsSource("random"))
    x = torch.rand(1, 3, 48, 64) * 255 - 120  # seed space: pixels minus the mean
    want = []
    h = seed_to_torchvision(x)
    for index, module in enumerate(explicit):
        h = module(h)
        if index in (0, 10, 28):
            want.append(h)
    for ours, ref in zip(folded(x), want, strict=True):
        scale = ref.abs().max()
        assert (ours - ref).abs().max() <= 1e-5 * scale


def test_fold_scales_only_the_first_convolution() -> None:
    state = random_state_dict()
    folded = fold_normalisation(state)
    assert not torch.equal(folded["0.weight"], state["0.weight"])
    assert all(torch.equal(folded[k], state[k]) for k in state if k != "0.weight")
