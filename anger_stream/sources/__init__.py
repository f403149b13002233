"""Adapters that turn the outside world into float32 sample chunks: files, raw stdin, the microphone."""

from .errors import DeviceError, InputError

__all__ = ["DeviceError", "InputError"]
