"""VGG-19 layer names, as the paper and the seed use them, mapped onto torchvision's indices.

The PyTorch tutorial counts convolutions ("conv_4") and so names the wrong layers; here the map
is written out from the architecture, and a test pins the known indices.
"""

from __future__ import annotations

import re

# Convolutions per block in VGG-19 ("E" configuration): 2, 2, 4, 4, 4.
CONVS_PER_BLOCK: tuple[int, ...] = (2, 2, 4, 4, 4)


def _build_index() -> dict[str, int]:
    index: dict[str, int] = {}
    position = 0
    for block, convs in enumerate(CONVS_PER_BLOCK, start=1):
        for conv in range(1, convs + 1):
            index[f"conv{block}_{conv}"] = position
            index[f"relu{block}_{conv}"] = position + 1
            position += 2
        index[f"pool{block}"] = position
        position += 1
    return index


LAYER_INDEX: dict[str, int] = _build_index()
# What a client may name: the seed's convolution outputs and their ReLUs.
SELECTABLE_LAYERS: tuple[str, ...] = tuple(n for n in LAYER_INDEX if re.match(r"(conv|relu)\d_\d$", n))
CONV_INDICES: tuple[int, ...] = tuple(i for n, i in LAYER_INDEX.items() if n.startswith("conv"))
# Length of torchvision's vgg19().features.
FEATURES_LENGTH: int = max(LAYER_INDEX.values()) + 1


def layer_index(name: str) -> int:
    """torchvision `features` index of a layer name such as conv4_2; KeyError if unknown."""
    return LAYER_INDEX[name]


# Output channels of the 16 convolutions, in order.
CONV_CHANNELS: tuple[int, ...] = (64, 64, 128, 128, 256, 256, 256, 256, *(512,) * 8)


def conv_shapes() -> dict[str, tuple[int, ...]]:
    """Shapes of the state dict of torchvision's `vgg19().features`, keyed as it keys them."""
    shapes: dict[str, tuple[int, ...]] = {}
    in_channels = 3
    for index, out_channels in zip(CONV_INDICES, CONV_CHANNELS, strict=True):
        shapes[f"{index}.weight"] = (out_channels, in_channels, 3, 3)
        shapes[f"{index}.bias"] = (out_channels,)
        in_channels = out_channels
    return shapes
