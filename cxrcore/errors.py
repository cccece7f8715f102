"""User-facing errors: bad data, bad options, missing files.

Anything raised as :class:`CXRError` is a problem with the input, not a bug; the
CLI prints its message on one line and exits non-zero, and the dashboard shows it.
"""

from __future__ import annotations


class CXRError(Exception):
    """A problem the user can fix (a missing folder, an unreadable image, ...)."""


class DataError(CXRError):
    """The dataset cannot be read as asked."""


class ImageDecodeError(DataError):
    """One image (a file or uploaded bytes) cannot be decoded."""

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot read image {source}: {reason}")


class ConfigError(CXRError):
    """A training or evaluation option is invalid."""


class WeightsError(CXRError):
    """Pretrained weights are missing or do not fit the model."""


class RunError(CXRError):
    """A run directory is missing or incomplete."""
