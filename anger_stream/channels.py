"""Which channels of a multi-channel recording are scored: all mixed into one stream, each as its own stream
(a call recording with the agent on one channel and the customer on the other), or one channel alone.

The one definition used by `batch`, `report`, `calibrate` and the live detector's `--input` files
(`SplitDetector`: one streaming detector per channel).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .audio import mixdown
from .detector import AngerDetector
from .events import Event

MODES = ("mix", "split")
"""--channels: 'mix' averages the channels into one stream; 'split' scores each channel as its own."""


def check(mode: str, channel: int | None = None) -> None:
    """Raise ValueError for an unknown mode, or a channel number given with 'split' or below 0."""
    if mode not in MODES:
        raise ValueError(f"--channels must be one of {', '.join(MODES)}, not {mode!r}")
    if channel is not None and (channel < 0 or mode != "mix"):
        raise ValueError("--channel takes a channel number from 0 and cannot be combined with --channels split")


def select(samples: np.ndarray, mode: str = "mix", channel: int | None = None) -> list[tuple[int | None, np.ndarray]]:
    """The mono streams to score of (frames, channels) audio, each with its channel number (None: mixed).

    'mix' gives one stream, the channels averaged; 'split' one per channel, in order; `channel` (0 is the
    first, the left of a stereo file) that channel alone. A channel the audio lacks is a ValueError.
    """
    check(mode, channel)
    x = np.asarray(samples)
    if x.ndim == 1:
        x = x[:, None]
    if channel is not None:
        if channel >= x.shape[1]:
            have = f"{x.shape[1]} channel{'s' * (x.shape[1] != 1)}"
            raise ValueError(f"there is no channel {channel}: the audio has {have} (numbered from 0)")
        return [(channel, x[:, channel])]
    if mode == "split":
        return [(c, x[:, c]) for c in range(x.shape[1])]
    return [(None, mixdown(x))]


@dataclass(frozen=True)
class OnChannel:
    """An event of one channel's stream; its JSON line starts with "channel"."""

    channel: int
    event: Event

    def to_dict(self) -> dict[str, Any]:
        return {"channel": self.channel, **self.event.to_dict()}


def unwrap(event: Event | OnChannel) -> Event:
    """The event itself, whether or not it came from one channel of a split input."""
    return event.event if isinstance(event, OnChannel) else event


class SplitDetector:
    """Streaming detection of every channel of (frames, channels) blocks, each channel its own `AngerDetector`
    (all sharing one model); `feed` and `flush` return the channels' events, in channel order per block."""

    def __init__(self, detector: AngerDetector, n_channels: int) -> None:
        self.config = detector.config
        self.detectors = [AngerDetector(detector.model, config=detector.config) for _ in range(n_channels)]

    @property
    def t(self) -> float:
        """Stream time in seconds (every channel has received the same number of samples)."""
        return self.detectors[0].t

    @property
    def duration(self) -> float:
        """Seconds of input fed so far."""
        return self.detectors[0].duration

    def feed(self, samples: np.ndarray, sample_rate: int | None = None) -> list[OnChannel]:
        x = np.asarray(samples).reshape(len(samples), -1)
        return [OnChannel(c, e) for c, d in enumerate(self.detectors) for e in d.feed(x[:, c], sample_rate)]

    def flush(self, interrupted: bool = False) -> list[OnChannel]:
        return [OnChannel(c, e) for c, d in enumerate(self.detectors) for e in d.flush(interrupted)]
