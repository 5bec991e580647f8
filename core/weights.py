"""Where the VGG-19 weights come from: torchvision's ImageNet weights, a local file, or random.

`NST_VGG_WEIGHTS` chooses: unset or `imagenet` for torchvision's `VGG19_Weights.IMAGENET1K_V1`
(downloaded once into torchvision's cache), a path to a state dict, or `random` - only ever by
explicit request. Nothing here falls back to another source when the chosen one fails.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torchvision.models import VGG19_Weights

from core.errors import WeightsUnavailableError
from core.layers import conv_shapes

log = logging.getLogger(__name__)

ENV_VAR = "NST_VGG_WEIGHTS"

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightsSource:
    kind: Literal["imagenet", "random", "file"]
    path: Path | None = None

    @property
    def label(self) -> str:
        """What every output is marked with: "imagenet", "random" or the file used."""
        return str(self.path) if self.kind == "file" else self.kind

    @classmethod
    def parse(cls, value: str | None) -> WeightsSource:
        if value is None or value.strip() in ("", "imagenet"):
            return cls("imagenet")
        if value.strip() == "random":
            return cls("random")
        return cls("file", Path(value).expanduser().resolve())

    @classmethod
    def from_env(cls) -> WeightsSource:
        return cls.parse(os.environ.get(ENV_VAR))


def features_state_dict(source: WeightsSource) -> StateDict:
    """The state dict of torchvision's `vgg19().features` (keys `0.weight`, `0.bias`, ...)."""
    if source.kind == "random":
        log.warning("%s=random: using untrained VGG-19 weights; results are not style transfer", ENV_VAR)
        return random_state_dict()
    if source.kind == "file":
        assert source.path is not None  # parse gives a file source its path
        return _features_from_file(source.path)
    return _features_from_torchvision()


def random_state_dict() -> StateDict:
    """torchvision's initialisation (Kaiming normal, fan_out, zero bias), from a fixed seed so that
    random weights are the same weights in every process and on every run."""
    generator = torch.Generator().manual_seed(0)
    state: StateDict = {}
    for key, shape in conv_shapes().items():
        if key.endswith(".bias"):
            state[key] = torch.zeros(shape)
        else:
            fan_out = shape[0] * shape[2] * shape[3]
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_out) ** 0.5
    return state


def _features_from_torchvision() -> StateDict:
    try:
        full = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError)
        raise WeightsUnavailableError(
            f"cannot load torchvision's VGG-19 ImageNet weights ({exc}). With no network, download "
            f"{VGG19_Weights.IMAGENET1K_V1.url} elsewhere and set {ENV_VAR}=/path/to/that/file; "
            f"for tests only, {ENV_VAR}=random"
        ) from exc
    return _strip_features_prefix(full, "torchvision's download")


def _features_from_file(path: Path) -> StateDict:
    if not path.is_file():
        raise WeightsUnavailableError(f"{ENV_VAR}={path}: no such file")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"{ENV_VAR}={path}: not a readable PyTorch state dict ({exc})") from exc
    if not isinstance(loaded, dict):
        raise WeightsUnavailableError(f"{ENV_VAR}={path}: expected a state dict, found {type(loaded).__name__}")
    return _strip_features_prefix(loaded, f"{ENV_VAR}={path}")


def _strip_features_prefix(state: dict[str, object], origin: str) -> StateDict:
    """Accept a full VGG-19 state dict (`features.N.*`, `classifier.*`) or a features-only one."""
    has_prefix = any(key.startswith("features.") for key in state)
    features: StateDict = {}
    for key, value in state.items():
        if has_prefix:
            if not key.startswith("features."):
                continue
            key = key.removeprefix("features.")
        if not isinstance(value, torch.Tensor):
            raise WeightsUnavailableError(f"{origin}: entry {key!r} is not a tensor")
        features[key] = value
    expected = conv_shapes()
    missing = [k for k in expected if k not in features]
    if missing:
        raise WeightsUnavailableError(
            f"{origin}: not VGG-19 weights in torchvision's layout (missing {', '.join(missing[:4])}...)"
        )
    for key, shape in expected.items():
        if tuple(features[key].shape) != shape:
            raise WeightsUnavailableError(
                f"{origin}: {key} has shape {tuple(features[key].shape)}, VGG-19 needs {shape}"
            )
    return {k: features[k] for k in expected}
