"""The error types sources raise for input they cannot use (each maps to one exit code of the CLI)."""

import numpy as np

from ..audio import NON_FINITE


class InputError(Exception):
    """Unusable input: a missing or corrupt file, malformed raw audio on stdin."""


class DeviceError(InputError):
    """An audio device that cannot be listed or opened, or that stops delivering audio."""


def require_finite(samples: np.ndarray, name: str) -> np.ndarray:
    """`samples` if every one is finite, else InputError naming the input (`name`)."""
    if not np.isfinite(samples).all():
        raise InputError(f"{name} {NON_FINITE}")
    return samples
