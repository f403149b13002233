"""The error types sources raise for input they cannot use (each maps to one exit code of the CLI)."""


class InputError(Exception):
    """Unusable input: a missing or corrupt file, malformed raw audio on stdin."""


class DeviceError(InputError):
    """An audio device that cannot be listed or opened, or that stops delivering audio."""
