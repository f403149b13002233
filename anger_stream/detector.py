"""Streaming anger detection for one audio stream: `AngerDetector`, a `StreamSet` of one stream.

The detector's parameters (`DetectorConfig`), the rate check and where windows fall live in `config`, the
event logic in `tracker`; they are re-exported here, where users of the single-stream API look for them.
"""

from __future__ import annotations

from dataclasses import fields
from difflib import get_close_matches
from pathlib import Path

import numpy as np

from . import audio
from .config import (
    MAX_RATE,
    MAX_RATIO_TERM,
    MAX_WINDOW_S,
    MIN_RATE,
    DetectorConfig,
    Segment,
    check_rate,
    window_bounds,
    windows,
)
from .events import Event, Window
from .model import AngerModel
from .streams import StreamSet
from .tracker import EventTracker

__all__ = [
    "MAX_RATE",
    "MAX_RATIO_TERM",
    "MAX_WINDOW_S",
    "MIN_RATE",
    "AngerDetector",
    "DetectorConfig",
    "EventTracker",
    "Segment",
    "check_rate",
    "window_bounds",
    "windows",
]

MAX_BATCH = 64
"""Windows per model call when a stream has many due at once (a long chunk, offline analysis)."""
_STREAM = 0


def _finite(x: np.ndarray) -> np.ndarray:
    """Audio given to the API: NaN or infinite samples are refused (ValueError), as the command line does."""
    if not np.isfinite(x).all():
        raise ValueError(f"audio {audio.NON_FINITE}")
    return x


class AngerDetector:
    """Streaming anger detection for one audio stream.

    >>> detector = AngerDetector()  # the defaults of DetectorConfig
    >>> for event in detector.feed(chunk, sample_rate=16000): ...
    >>> detector.flush()  # at the end of the stream
    """

    def __init__(
        self,
        model: AngerModel | str | Path | None = None,
        threshold: float | None = None,
        *,
        sample_rate: int = audio.SAMPLE_RATE,
        config: DetectorConfig | None = None,
        **settings: float,
    ) -> None:
        """`model`: an AngerModel, a path, a packaged model's name (`model.PACKAGED_MODELS`) or None (the
        default, "full"). The detector's parameters come as `config` or as its fields (threshold=, hop_s=, ...),
        not both."""
        names = [f.name for f in fields(DetectorConfig) if f.init]
        unknown = sorted(set(settings) - set(names))
        if unknown:
            close = [m for name in unknown for m in get_close_matches(name, names, n=1)]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            valid = ", ".join(names)
            raise TypeError(f"AngerDetector got an unknown setting {', '.join(unknown)}{hint}; valid: {valid}")
        if config is None:
            config = DetectorConfig(**({} if threshold is None else {"threshold": threshold}), **settings)
        elif threshold is not None or settings:
            raise TypeError("give either config or its fields, not both")
        self.config = config
        self.sample_rate = check_rate(sample_rate)
        self.model = model if isinstance(model, AngerModel) else AngerModel(model)
        self.reset()

    def _streams(self, sample_rate: int) -> StreamSet:
        streams = StreamSet(self.model, self.config, max_batch=MAX_BATCH, workers=1)
        streams.add(_STREAM, sample_rate)
        return streams

    def reset(self, sample_rate: int | None = None) -> None:
        """Forget the stream: the next sample is at t = 0 (at `sample_rate`, if given, this stream only)."""
        self._rate = self.sample_rate if sample_rate is None else check_rate(sample_rate)
        self._set = self._streams(self._rate)
        self._fed = 0

    @property
    def t(self) -> float:
        """Stream time in seconds (16 kHz samples produced so far)."""
        return self._set.t(_STREAM)

    @property
    def duration(self) -> float:
        """Seconds of input fed so far (at its own rate): where the stream ends if it ends now."""
        return self._fed / self._rate

    def feed(self, samples: np.ndarray, sample_rate: int | None = None) -> list[Event]:
        """Add samples (float in [-1, 1] or integer PCM; mono, or (frames, channels) mixed down); return the
        events they complete. ValueError for NaN or infinite samples, as the command line refuses them."""
        x = _finite(audio.as_mono(samples))
        if sample_rate is not None and sample_rate != self._rate:
            if self._fed:
                raise ValueError("the sample rate cannot change within a stream; call reset() first")
            self.reset(sample_rate)
        self._set.push(_STREAM, x)
        self._fed += len(x)
        return self._set.tick().get(_STREAM, [])

    def flush(self, interrupted: bool = False) -> list[Event]:
        """End the stream: score the last partial windows, close an open anger segment (ended_by "input_end",
        or "interrupted" when the program was stopped), start afresh."""
        self._set.end(_STREAM, interrupted)
        events = self._set.tick().get(_STREAM, [])
        self.reset()
        return events

    def analyse(self, samples: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> list[Event]:
        """Offline: the windows and anger events of a whole signal, as a live stream of it would give them.

        The signal (mono, or (frames, channels) mixed down, as `feed` takes it) is resampled in one go
        (resample_poly) and scored in batches; the detector's own stream is left untouched.
        """
        x = audio.sane(_finite(audio.as_mono(samples)))  # clipped within SANE_PEAK
        x = audio.resample(x, check_rate(sample_rate))
        streams = self._streams(audio.SAMPLE_RATE)
        events: list[Event] = []
        step = MAX_BATCH * self.config.hop
        for i in range(0, len(x), step):
            streams.push(_STREAM, x[i : i + step])
            events += streams.tick().get(_STREAM, [])
        streams.end(_STREAM)
        return events + streams.tick().get(_STREAM, [])

    def score(self, samples: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> np.ndarray:
        """Offline: p(anger) for every window of a whole signal (NaN where silent)."""
        windows = [e for e in self.analyse(samples, sample_rate) if isinstance(e, Window)]
        return np.array([np.nan if w.p is None else w.p for w in windows], dtype=np.float64)
