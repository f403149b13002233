"""The detector's parameters in human units, checked once, and where its windows fall.

Shared by the live core (`streams`), the single-stream detector, batch, the servers and training tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np

from . import audio

MAX_WINDOW_S = 10.0
"""The longest window a detector takes (the model was trained on 1.2 s windows)."""
MIN_RATE, MAX_RATE = 1_000, 384_000
MAX_HOLD_S = 60.0
"""The longest hold a detector takes (a segment is open at most this long after its last angry window)."""
MAX_RATIO_TERM = 2_000
"""Input sample rates are whole Hz in [MIN_RATE, MAX_RATE] whose ratio to 16 kHz reduces to a fraction with
terms of at most this (8000, 11025, 22050, 44100, 48000, 96000 Hz and the like): the resampler's filter
grows with those terms (47999 Hz would need a 1.9 million tap filter)."""


def check_rate(rate: object) -> int:
    """A usable input sample rate as an int, or ValueError saying why not."""
    ok = isinstance(rate, int | float | np.integer | np.floating) and not isinstance(rate, bool | np.bool_)
    if not ok or not np.isfinite(rate) or rate != int(rate):
        raise ValueError(f"sample rate must be a whole number of Hz, not {rate!r}")
    rate = int(rate)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample rate must be from {MIN_RATE} to {MAX_RATE} Hz, not {rate}")
    g = gcd(rate, audio.SAMPLE_RATE)
    if max(rate, audio.SAMPLE_RATE) // g > MAX_RATIO_TERM:
        raise ValueError(
            f"sample rate {rate} Hz is not supported: its ratio to {audio.SAMPLE_RATE} Hz "
            f"({audio.SAMPLE_RATE // g}/{rate // g}) needs too long a resampling filter; resample it first "
            "(e.g. sox in.wav -r 16000 out.wav)"
        )
    return rate


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters in human units, checked once here (for the CLI, the servers, batch and the Python API alike)
    and converted to samples once. Invalid values raise ValueError naming the field."""

    threshold: float = 0.92
    window_s: float = audio.WINDOW_S
    hop_s: float = audio.HOP_S
    min_audio_s: float = audio.MIN_AUDIO_S
    min_dbfs: float = audio.MIN_DBFS
    patience: int = 1
    hysteresis: float = 0.1
    hold_s: float = 6.0
    """How long an anger segment stays open after its last angry window through silence and calmer speech."""
    # threshold, patience and hold_s: the rule of docs/false-alarms.json (tools.evaluate.false_alarms): at most
    # 6 false alarms per hour of calm speech, the most angry passages caught within 3 s

    def __post_init__(self) -> None:
        for name in ("threshold", "window_s", "hop_s", "min_audio_s", "min_dbfs", "hysteresis", "hold_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"{name} must be finite, not {value}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be from 0 to 1, not {self.threshold}")
        if not 0.0 < self.window_s <= MAX_WINDOW_S:
            raise ValueError(f"window_s must be above 0 and at most {MAX_WINDOW_S} s, not {self.window_s}")
        if not (self.hop >= 1 and self.hop_s <= self.window_s):
            raise ValueError(
                f"hop_s must be at least one sample (1/{audio.SAMPLE_RATE} s) and at most the window "
                f"({self.window_s} s), not {self.hop_s}"
            )
        if not (self.min_audio >= 1 and self.min_audio_s <= self.window_s):
            raise ValueError(f"min_audio_s must be above 0 and at most the window, not {self.min_audio_s}")
        if not -200.0 <= self.min_dbfs <= 0.0:
            raise ValueError(f"min_dbfs must be from -200 to 0 dBFS, not {self.min_dbfs}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int | np.integer) or self.patience < 1:
            raise ValueError(f"patience must be a whole number of windows, at least 1, not {self.patience!r}")
        if not 0.0 <= self.hysteresis <= 1.0:
            raise ValueError(f"hysteresis must be from 0 to 1, not {self.hysteresis}")
        if not 0.0 <= self.hold_s <= MAX_HOLD_S:
            raise ValueError(f"hold_s must be from 0 to {MAX_HOLD_S:g} s, not {self.hold_s}")

    @property
    def window(self) -> int:
        return round(self.window_s * audio.SAMPLE_RATE)

    @property
    def hop(self) -> int:
        return round(self.hop_s * audio.SAMPLE_RATE)

    @property
    def min_audio(self) -> int:
        return round(self.min_audio_s * audio.SAMPLE_RATE)


def window_count(available: np.ndarray | int, ended: np.ndarray | bool, config: DetectorConfig) -> np.ndarray:
    """How many windows start, a hop apart, within `available` 16 kHz samples from the first start: while a
    stream goes on, only whole windows; once it has ended, every start with at least min_audio real samples
    after it (the last windows end with the stream)."""
    need = np.where(ended, config.min_audio, config.window)
    return np.where(available >= need, (available - need) // config.hop + 1, 0)


def window_bounds(n_samples: int, config: DetectorConfig | None = None) -> list[tuple[int, int]]:
    """(start, end) of the windows of a 16 kHz signal of n_samples, as the live detector cuts them (a whole
    stream: `window_count` with the stream ended); the last ones end with the stream (shorter than the window:
    zero-padded when prepared)."""
    c = config or DetectorConfig()
    starts = range(0, int(window_count(n_samples, True, c)) * c.hop, c.hop)
    return [(s, min(s + c.window, n_samples)) for s in starts]


@dataclass(frozen=True)
class Segment:
    """A window's audio as cut from a stream (shorter than the window at the end of a stream)."""

    start: int
    audio: np.ndarray


def windows(x: np.ndarray, config: DetectorConfig | None = None) -> list[Segment]:
    """Offline: the windows a live stream of the 16 kHz signal x would cut, unscored (the last ones shorter)."""
    return [Segment(s, x[s:e]) for s, e in window_bounds(len(x), config)]
