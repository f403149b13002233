"""The microphone through PortAudio (sounddevice): the callback only queues blocks; a reader drains them.

The device is opened at 16 kHz if it can be, else at its default rate (the detector then resamples). A device
that vanishes does not raise in PortAudio: the callbacks stop and the stream turns inactive, so the reader
watches for that and raises InputError instead of waiting forever.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..audio import SAMPLE_RATE
from .errors import DeviceError

BLOCK_S = 0.02
STALL_S = 3.0
"""No audio for this long means the device is gone, whatever PortAudio says."""


def _sounddevice() -> Any:
    try:
        import sounddevice
    except OSError as exc:  # libportaudio missing
        raise DeviceError(f"no audio system: {exc}") from None
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Input devices: index, name, host API, channels, default rate, whether it is the default."""
    sd = _sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
        apis = sd.query_hostapis()
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot list audio devices: {exc}") from None
    return [
        {
            "index": d["index"],
            "name": d["name"],
            "hostapi": apis[d["hostapi"]]["name"],
            "channels": d["max_input_channels"],
            "default_rate": d["default_samplerate"],
            "default": d["index"] == default_in,
        }
        for d in devices
        if d["max_input_channels"] > 0
    ]


def _device_arg(device: str | None) -> int | str | None:
    return int(device) if device is not None and device.isdigit() else device


@dataclass
class Microphone:
    """An open input stream; iterate it for float32 mono blocks, check `overflows` for lost audio."""

    device: str | None = None

    def __post_init__(self) -> None:
        sd = _sounddevice()
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue()
        self.overflows = 0
        device = _device_arg(self.device)
        try:
            info = sd.query_devices(device, kind="input")
            try:
                sd.check_input_settings(device=device, channels=1, samplerate=SAMPLE_RATE, dtype="float32")
                self.sample_rate = SAMPLE_RATE
            except (sd.PortAudioError, ValueError):
                self.sample_rate = int(info["default_samplerate"])
            self.name = info["name"]
            self._stream = sd.InputStream(
                samplerate=self.sample_rate,
                blocksize=round(self.sample_rate * BLOCK_S),
                device=device,
                channels=1,
                dtype="float32",
                callback=self._callback,
                finished_callback=lambda: self._queue.put(None),
            )
        except (sd.PortAudioError, ValueError) as exc:
            if self.device is None and not list_input_devices():
                raise DeviceError("no microphone: this system has no audio input device") from None
            raise DeviceError(f"cannot open input device {self.device or '(default)'}: {exc}") from None

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        if status.input_overflow:
            self.overflows += 1
        self._queue.put(indata[:, 0].copy())

    def __enter__(self) -> Microphone:
        self._stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close(ignore_errors=True)

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            try:
                block = self._queue.get(timeout=STALL_S)
            except queue.Empty:
                block = None
            if block is None:
                raise DeviceError(f"input device {self.name!r} stopped delivering audio (disconnected?)")
            yield block
