"""Neural style transfer (Gatys et al.) with VGG-19, as the seed example runs it.

Pure PyTorch: no web, no queue, no print. See `stylize`.
"""

from core.errors import InvalidImageError, StyleError, WeightsUnavailableError
from core.images import open_image
from core.params import StyleParams
from core.stylize import Losses, Progress, StyleResult, stylize
from core.weights import WeightsSource

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
