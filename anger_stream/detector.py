"""The sans-I/O core: samples in, windows and anger events out.

A `Stream` holds one audio stream's state: resampler, window buffer and event state. It never calls the
model; `score_windows` does, for the due windows of any number of streams in one batch. `AngerDetector`
is one stream plus a model; `streams.StreamSet` is many streams sharing one model. Both run exactly this
code, so they give identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from . import audio
from .events import AngerEnd, AngerStart, Event, Window
from .model import AngerModel
from .resampler import StreamingResampler

MAX_WINDOW_S = 10.0
"""The longest window a detector takes (the model was trained on 1.2 s windows)."""
MIN_RATE, MAX_RATE = 1_000, 384_000
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

    threshold: float = 0.6
    window_s: float = audio.WINDOW_S
    hop_s: float = audio.HOP_S
    min_audio_s: float = audio.MIN_AUDIO_S
    min_dbfs: float = audio.MIN_DBFS
    patience: int = 1
    hysteresis: float = 0.1

    def __post_init__(self) -> None:
        for name in ("threshold", "window_s", "hop_s", "min_audio_s", "min_dbfs", "hysteresis"):
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

    @property
    def window(self) -> int:
        return round(self.window_s * audio.SAMPLE_RATE)

    @property
    def hop(self) -> int:
        return round(self.hop_s * audio.SAMPLE_RATE)

    @property
    def min_audio(self) -> int:
        return round(self.min_audio_s * audio.SAMPLE_RATE)


@dataclass(frozen=True)
class Segment:
    """A window's audio as cut from the stream (shorter than the window at the end of a stream)."""

    start: int
    audio: np.ndarray


class Windower:
    """A ring buffer that cuts a window every hop: any chunk size in, the same windows out."""

    def __init__(self, window: int, hop: int, min_audio: int) -> None:
        self.window, self.hop, self.min_audio = window, hop, min_audio
        self._buf = np.zeros(window + max(hop, 4096), dtype=np.float32)
        self._len = 0  # samples held, the first at absolute index self._base
        self._base = 0
        self._next = 0  # absolute start of the next window
        self.samples = 0  # samples received so far

    @property
    def next_end(self) -> int:
        """How many samples the stream must have received for its next window to be complete."""
        return self._next + self.window

    def bounds(self, n_samples: int) -> list[tuple[int, int]]:
        """Offline: (start, end) of every window `push` and `finish` cut from a stream of n_samples.

        A window starts every hop and holds at least min_audio real samples; the last ones end with the stream
        (shorter than the window: zero-padded when prepared).
        """
        last = n_samples - self.min_audio
        return [(s, min(s + self.window, n_samples)) for s in range(0, max(last + 1, 0), self.hop)]

    def push(self, x: np.ndarray) -> list[Segment]:
        """Append samples; return the windows that became complete."""
        out: list[Segment] = []
        while len(x):
            n = min(len(x), len(self._buf) - self._len)
            self._buf[self._len : self._len + n] = x[:n]
            self._len += n
            self.samples += n
            x = x[n:]
            while self.next_end <= self._base + self._len:
                offset = self._next - self._base
                out.append(Segment(self._next, self._buf[offset : offset + self.window].copy()))
                self._next += self.hop
            drop = self._next - self._base
            if drop:
                self._buf[: self._len - drop] = self._buf[drop : self._len]
                self._len -= drop
                self._base = self._next
        return out

    def finish(self) -> list[Segment]:
        """The last, partial windows that still hold at least min_audio samples."""
        out = []
        while self.samples - self._next >= self.min_audio:
            offset = self._next - self._base
            out.append(Segment(self._next, self._buf[offset : self._len].copy()))
            self._next += self.hop
        return out


def window_bounds(n_samples: int, config: DetectorConfig | None = None) -> list[tuple[int, int]]:
    """(start, end) of the windows of a 16 kHz signal of n_samples, as the live detector cuts them."""
    c = config or DetectorConfig()
    return Windower(c.window, c.hop, c.min_audio).bounds(n_samples)


def windows(x: np.ndarray, config: DetectorConfig | None = None) -> list[Segment]:
    """Offline: the windows a live stream of the 16 kHz signal x would cut, unscored (the last ones shorter)."""
    return [Segment(s, x[s:e]) for s, e in window_bounds(len(x), config)]


class EventTracker:
    """Turns window probabilities into anger_start / anger_end with patience and hysteresis."""

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self.active = False
        self._run = 0  # consecutive windows at or above the threshold
        self._onset = 0.0  # where the current run of angry windows began
        self._start_t = 0.0
        self._p_max = 0.0

    def update(self, window: Window) -> list[Event]:
        c = self.config
        if self.active:
            if window.p is None or window.p < c.threshold - c.hysteresis:
                return [self.close(window.t_end)]
            self._p_max = max(self._p_max, window.p)
            return []
        self._run = self._run + 1 if window.angry else 0
        if self._run == 1:
            self._onset = window.t_start
        if self._run >= c.patience:
            self.active, self._start_t, self._p_max = True, window.t_end, window.p or 0.0
            return [AngerStart(window.t_end, window.p or 0.0, self._onset)]
        return []

    def close(self, t: float) -> AngerEnd:
        """End the open segment at time t."""
        self.active, self._run = False, 0
        return AngerEnd(t, t - self._start_t, self._p_max)


class Stream:
    """One audio stream's state, without the model: resample -> windows due -> (scores) -> events."""

    def __init__(self, config: DetectorConfig, sample_rate: int = audio.SAMPLE_RATE) -> None:
        self.config = config
        self.sample_rate = check_rate(sample_rate)
        self._resampler = (
            StreamingResampler(sample_rate, audio.SAMPLE_RATE) if sample_rate != audio.SAMPLE_RATE else None
        )
        self.windower = Windower(config.window, config.hop, config.min_audio)
        self.tracker = EventTracker(config)
        self.pending: list[Segment] = []
        self.ended = False

    @property
    def t(self) -> float:
        """Stream time in seconds (16 kHz samples received)."""
        return self.windower.samples / audio.SAMPLE_RATE

    def push(self, samples: np.ndarray) -> None:
        """Queue float samples in [-1, 1] at the stream's rate (non-finite values count as silence)."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():  # checking first is much cheaper than an unconditional copy
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if self._resampler is not None:
            x = self._resampler.process(x)
        self.pending += self.windower.push(x)

    def finish(self) -> None:
        """Mark the end of the stream: the last partial windows become due."""
        if self._resampler is not None:
            self.pending += self.windower.push(self._resampler.flush())
        self.pending += self.windower.finish()
        self.ended = True

    def take(self, limit: int | None = None) -> list[Segment]:
        """The due windows, oldest first: all of them, or at most `limit` (the rest stay due)."""
        n = len(self.pending) if limit is None else limit
        segments, self.pending = self.pending[:n], self.pending[n:]
        return segments

    def due_at(self) -> int:
        """Samples at the stream's own rate it must have received for its next unscored window (the
        resampler's look-ahead included)."""
        end = self.pending[0].start + self.config.window if self.pending else self.windower.next_end
        return self._resampler.inputs_for(end) if self._resampler is not None else end

    def events(self, segments: list[Segment], probs: np.ndarray, levels: np.ndarray) -> list[Event]:
        """Windows and anger events for scored segments."""
        events: list[Event] = []
        for seg, p, level in zip(segments, probs, levels, strict=True):
            t_start = seg.start / audio.SAMPLE_RATE
            t_end = (seg.start + len(seg.audio)) / audio.SAMPLE_RATE
            p_val = None if np.isnan(p) else float(p)
            angry = p_val is not None and p_val >= self.config.threshold
            window = Window(t_start, t_end, p_val, angry, float(level))
            events.append(window)
            events += self.tracker.update(window)
        return events

    def close(self) -> list[Event]:
        """At the end of the stream: the anger_end of a segment still open."""
        return [self.tracker.close(self.t)] if self.tracker.active else []


def score_windows(model: AngerModel, segments: list[Segment], config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """(p, dBFS) per segment, in one batched model call; p is NaN for windows below the silence gate.

    Full windows are measured and normalised together in one vectorised pass; the short last windows of a
    stream are measured on their real samples and zero-padded.
    """
    n = len(segments)
    levels = np.empty(n, dtype=np.float64)
    batch = np.empty((n, config.window), dtype=np.float32)
    full = [i for i, s in enumerate(segments) if len(s.audio) == config.window]
    if full:
        levels[full], batch[full] = audio.measure_and_normalise(np.stack([segments[i].audio for i in full]))
    for i in sorted(set(range(n)) - set(full)):
        levels[i] = audio.dbfs(segments[i].audio)
        batch[i] = audio.prepare_window(segments[i].audio, config.window)
    probs = np.full(n, np.nan, dtype=np.float64)
    loud = np.flatnonzero(levels >= config.min_dbfs)
    if len(loud):
        probs[loud] = model.predict(batch if len(loud) == n else batch[loud])
    return probs, levels


def score_pending(model: AngerModel, stream: Stream) -> list[Event]:
    """Score one stream's due windows in one batch; its windows and anger events."""
    segments = stream.take()
    return stream.events(segments, *score_windows(model, segments, stream.config))


class AngerDetector:
    """Streaming anger detection for one audio stream.

    >>> detector = AngerDetector(threshold=0.6)
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
        """`model`: an AngerModel, a path, a packaged model's name ("fp32", "int8") or None (fp32). The
        detector's parameters come as `config` or as its fields (threshold=, hop_s=, ...), not both."""
        if config is None:
            config = DetectorConfig(**({} if threshold is None else {"threshold": threshold}), **settings)
        elif threshold is not None or settings:
            raise TypeError("give either config or its fields, not both")
        self.config = config
        self.sample_rate = check_rate(sample_rate)
        self.model = model if isinstance(model, AngerModel) else AngerModel(model)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next sample is at t = 0."""
        self.stream = Stream(self.config, self.sample_rate)

    def feed(self, samples: np.ndarray, sample_rate: int | None = None) -> list[Event]:
        """Add samples (float in [-1, 1] or integer PCM; mono, or (frames, channels) mixed down); return the
        events they complete."""
        x = audio.as_mono(samples)
        if sample_rate is not None and sample_rate != self.stream.sample_rate:
            if self.stream.windower.samples:
                raise ValueError("the sample rate cannot change within a stream; call reset() first")
            self.stream = Stream(self.config, sample_rate)
        self.stream.push(x)
        return score_pending(self.model, self.stream)

    def flush(self) -> list[Event]:
        """End the stream: score the last partial windows, close an open anger segment, start afresh."""
        self.stream.finish()
        events = score_pending(self.model, self.stream) + self.stream.close()
        self.reset()
        return events

    def analyse(self, samples: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> list[Event]:
        """Offline: the windows and anger events of a whole signal, as a live stream of it would give them.

        The signal (mono, or (frames, channels) mixed down, as `feed` takes it) is resampled in one go
        (resample_poly) and scored in batches; the detector's own stream is left untouched.
        """
        x = np.nan_to_num(audio.as_mono(samples), nan=0.0, posinf=0.0, neginf=0.0)
        x = audio.resample(x, check_rate(sample_rate))
        stream = Stream(self.config)
        events: list[Event] = []
        step = 64 * self.config.hop  # at most 64 windows per model call
        for i in range(0, len(x), step):
            stream.push(x[i : i + step])
            events += score_pending(self.model, stream)
        stream.finish()
        return events + score_pending(self.model, stream) + stream.close()

    def score(self, samples: np.ndarray, sample_rate: int = audio.SAMPLE_RATE) -> np.ndarray:
        """Offline: p(anger) for every window of a whole signal (NaN where silent)."""
        windows = [e for e in self.analyse(samples, sample_rate) if isinstance(e, Window)]
        return np.array([np.nan if w.p is None else w.p for w in windows], dtype=np.float64)
