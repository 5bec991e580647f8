"""The domain's errors; the CLI and the service turn them into messages and HTTP codes at one edge."""

from __future__ import annotations


class StyleError(Exception):
    """Base of every error core raises on purpose."""


class WeightsUnavailableError(StyleError):
    """The VGG-19 weights cannot be had (no network, a missing or unreadable file)."""


class InvalidImageError(StyleError):
    """An input is not an image Pillow can decode."""


class CommandError(Exception):
    """A problem the user of a command can fix, reported as one line."""
