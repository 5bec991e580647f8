"""The VGG-19 feature extractor: torchvision's layout, average pooling, truncated, frozen.

The optimised image lives in the seed's space (pixels 0..255 minus the Caffe channel mean), where
a learning rate of 2 means two grey levels. torchvision's weights expect RGB in [0, 1] normalised
by ImageNet mean/std. The per-channel scale 1 / (255 * std) is folded into conv1_1's weights;
the two means differ by under half a grey level, and that offset is added before conv1_1 rather
than folded into its bias, because zero padding would make a folded bias wrong at the borders.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.layers import CONV_INDICES, CONVS_PER_BLOCK, FEATURES_LENGTH, layer_index
from core.params import PoolingKind
from core.weights import WeightsSource, features_state_dict

# The seed's channel mean (R, G, B) in 0..255, from the MATLAB network's input layer.
CAFFE_MEAN: tuple[float, float, float] = (123.68, 116.779, 103.939)
# torchvision's ImageNet normalisation, for inputs in 0..1.
TORCHVISION_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
TORCHVISION_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def seed_to_torchvision(x: torch.Tensor) -> torch.Tensor:
    """Explicit normalisation, seed space -> torchvision's input space (what the fold replaces)."""
    caffe = torch.tensor(CAFFE_MEAN, device=x.device).view(1, 3, 1, 1)
    mean = torch.tensor(TORCHVISION_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(TORCHVISION_STD, device=x.device).view(1, 3, 1, 1)
    return ((x + caffe) / 255.0 - mean) / std


def build_features(state: dict[str, torch.Tensor], *, depth: int, pooling: PoolingKind = "avg") -> nn.Sequential:
    """torchvision's `vgg19().features[:depth]`, same indices, with the chosen pooling.

    ReLUs are not in-place: a layer named convN_M is the convolution's output, which an in-place
    ReLU would overwrite before the loss reads it.
    """
    modules: list[nn.Module] = []
    in_channels = 3
    position = 0
    for convs in CONVS_PER_BLOCK:
        for _ in range(convs):
            out_channels = state[f"{position}.weight"].shape[0]
            conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
            conv.weight.data.copy_(state[f"{position}.weight"])
            assert conv.bias is not None  # Conv2d's bias=True default
            conv.bias.data.copy_(state[f"{position}.bias"])
            modules += [conv, nn.ReLU(inplace=False)]
            in_channels = out_channels
            position += 2
        pool: nn.Module = nn.AvgPool2d(2, 2) if pooling == "avg" else nn.MaxPool2d(2, 2)
        modules.append(pool)
        position += 1
    features = nn.Sequential(*modules[:depth])
    features.requires_grad_(False)
    return features.eval()


class VGGFeatures(nn.Module):
    """One forward pass that returns the feature maps of the requested layers, in order given.

    With `checkpointing`, a pass that autograd records keeps only the maps the losses read and
    the pools' outputs; each stretch between two of them is run again in the backward pass
    (torch.utils.checkpoint) instead of storing its inside. Same numbers, less memory, about a
    third more time.
    """

    input_offset: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, features: nn.Sequential, layers: Sequence[str], checkpointing: bool = False) -> None:
        super().__init__()
        self.features = features
        self.layers = tuple(layers)
        self.taps = tuple(layer_index(name) for name in self.layers)
        self.checkpointing = checkpointing
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.AvgPool2d | nn.MaxPool2d)]
        ends = sorted({*self.taps, *pools, len(features) - 1})
        starts = [0, *(end + 1 for end in ends[:-1])]
        # [start, end] module ranges, each ending at a map that must be kept anyway.
        self.segments = tuple(zip(starts, ends, strict=True))
        self.register_buffer(
            "input_offset",
            torch.tensor([c - 255.0 * m for c, m in zip(CAFFE_MEAN, TORCHVISION_MEAN, strict=True)]).view(1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        wanted = set(self.taps)
        found: dict[int, torch.Tensor] = {}
        x = x + self.input_offset
        if self.checkpointing and torch.is_grad_enabled() and x.requires_grad:
            for start, end in self.segments:
                x = checkpoint(self._run, x, start, end, use_reentrant=False)
                if end in wanted:
                    found[end] = x
            return [found[i] for i in self.taps]
        for index, module in enumerate(self.features):
            x = module(x)
            if index in wanted:
                found[index] = x
        return [found[i] for i in self.taps]

    def _run(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for module in self.features[start : end + 1]:
            x = module(x)
        return x


def fold_normalisation(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Scale conv1_1's input channels by 1 / (255 * std), so it takes seed-space pixels."""
    first = f"{CONV_INDICES[0]}.weight"
    scale = torch.tensor([1.0 / (255.0 * s) for s in TORCHVISION_STD]).view(1, 3, 1, 1)
    folded = dict(state)
    folded[first] = state[first] * scale
    return folded


_cache_lock = threading.Lock()
_state_cache: dict[WeightsSource, dict[str, torch.Tensor]] = {}
_network_cache: dict[tuple[WeightsSource, PoolingKind, str, bool], nn.Sequential] = {}


def cached_state_dict(source: WeightsSource) -> dict[str, torch.Tensor]:
    """Folded weights, loaded once per process and source (a worker must not reload per job)."""
    with _cache_lock:
        if source not in _state_cache:
            _state_cache[source] = fold_normalisation(features_state_dict(source))
        return _state_cache[source]


def cached_network(
    source: WeightsSource, pooling: PoolingKind, device: torch.device, channels_last: bool = False
) -> nn.Sequential:
    """The whole feature stack on `device`, built once per process; jobs share its frozen weights."""
    key = (source, pooling, str(device), channels_last)
    state = cached_state_dict(source)
    with _cache_lock:
        if key not in _network_cache:
            network = build_features(state, depth=FEATURES_LENGTH, pooling=pooling).to(device)
            if channels_last:
                network = network.to(memory_format=torch.channels_last)
            _network_cache[key] = network
        return _network_cache[key]


def vgg_extractor(
    layers: Sequence[str],
    *,
    pooling: PoolingKind = "avg",
    source: WeightsSource | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
    checkpointing: bool = False,
) -> VGGFeatures:
    """A frozen extractor for `layers`, truncated after the deepest of them."""
    if not layers:
        raise ValueError("no layers requested")
    device = torch.device(device)
    network = cached_network(source or WeightsSource.from_env(), pooling, device, channels_last)
    depth = max(layer_index(name) for name in layers) + 1
    # Slicing a Sequential shares its modules: truncation copies no weights.
    return VGGFeatures(network[:depth], layers, checkpointing).to(device)
