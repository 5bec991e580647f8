"""Neural style transfer (Gatys et al.) with VGG-19, as the seed example runs it.

Pure PyTorch: no web, no queue, no print. See `stylize`. Names are imported on first use, so
`core.params` and `core.decode` serve the API, which has no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "InvalidImageError": "core.errors",
    "StyleError": "core.errors",
    "WeightsUnavailableError": "core.errors",
    "open_image": "core.decode",
    "StyleParams": "core.params",
    "Losses": "core.transfer",
    "Progress": "core.transfer",
    "StyleResult": "core.transfer",
    "stylize": "core.transfer",
    "WeightsSource": "core.weights",
}

__all__ = [
    "InvalidImageError",
    "Losses",
    "Progress",
    "StyleError",
    "StyleParams",
    "StyleResult",
    "WeightsSource",
    "WeightsUnavailableError",
    "open_image",
    "stylize",
]

if TYPE_CHECKING:
    from core.decode import open_image
    from core.errors import InvalidImageError, StyleError, WeightsUnavailableError
    from core.params import StyleParams
    from core.transfer import Losses, Progress, StyleResult, stylize
    from core.weights import WeightsSource


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
