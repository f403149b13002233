"""Many independent streams (calls, microphones) sharing one model: every tick scores the windows due across
all of them, in small batches on worker threads."""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import audio, codec
from .detector import DetectorConfig, Segment, Stream, score_windows
from .events import Event
from .model import AngerModel


@dataclass(frozen=True)
class Feed:
    """One stream's input for a tick: new audio as raw bytes (whole samples), and whether the stream ended."""

    stream_id: Hashable
    sample_rate: int
    encoding: str  # a key of codec.WIDTHS
    data: bytes
    ending: bool


@dataclass(frozen=True)
class Scored:
    """What a tick of `StreamSet.run` gives back: the events of each stream fed, and for each stream still
    open, how many input samples (at its own rate) it must have received for its next unscored window."""

    events: dict[Hashable, list[Event]]
    due_at: dict[Hashable, int]


class StreamSet:
    """Holds streams by id; `push` buffers audio, `tick` scores the windows due across all streams.

    Each stream has its own resampler, window buffer, silence gate and event state, so one stream's input
    never affects another's results, which equal those of a single `AngerDetector` on the same audio.

    Windows are scored in small batches (`max_batch`: larger ones push the activations out of the CPU caches)
    by `workers` threads at once. Give it a one-thread model: onnxruntime releases the GIL, so two
    one-thread calls use two cores, which two intra-op threads on a small batch do not (docs/benchmarks.md).
    `max_windows`: at most this many windows of one stream per tick (the rest stay due for the next ticks),
    so a stream that sent a lot at once cannot make a tick long for the others.
    """

    def __init__(
        self,
        model: AngerModel,
        config: DetectorConfig | None = None,
        max_batch: int = 4,
        workers: int = 2,
        max_windows: int | None = None,
    ) -> None:
        self.model = model
        self.config = config or DetectorConfig()
        self.max_batch = max_batch
        self.workers = workers
        self.max_windows = max_windows
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="anger-score") if workers > 1 else None
        self.streams: dict[Hashable, Stream] = {}

    def add(self, stream_id: Hashable, sample_rate: int = audio.SAMPLE_RATE) -> None:
        if stream_id in self.streams:
            raise KeyError(f"stream {stream_id!r} exists already")
        self.streams[stream_id] = Stream(self.config, sample_rate)

    def push(self, stream_id: Hashable, samples: np.ndarray) -> None:
        """Queue float samples in [-1, 1] (or integer PCM) for one stream."""
        self.streams[stream_id].push(audio.to_float(samples))

    def end(self, stream_id: Hashable) -> None:
        """Mark a stream finished: its last windows and closing events come with the next ticks."""
        self.streams[stream_id].finish()

    def __len__(self) -> int:
        return len(self.streams)

    def run(self, feeds: tuple[Feed, ...]) -> Scored:
        """Feed raw audio (streams are added when first fed), end streams, and tick."""
        for f in feeds:
            if f.stream_id not in self.streams:
                self.add(f.stream_id, f.sample_rate)
            if f.data:
                self.streams[f.stream_id].push(codec.decode(f.data, f.encoding))
            if f.ending:
                self.end(f.stream_id)
        events = self.tick()
        due_at = {f.stream_id: self.streams[f.stream_id].due_at() for f in feeds if f.stream_id in self.streams}
        return Scored(events, due_at)

    def _score(self, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """(p, dBFS) of consecutive segments, max_batch windows per model call."""
        step = self.max_batch
        return _join(
            [score_windows(self.model, segments[i : i + step], self.config) for i in range(0, len(segments), step)]
        )

    def tick(self) -> dict[Hashable, list[Event]]:
        """Score the due windows of all streams in batches; ended streams are removed once fully scored."""
        due = [(sid, s, s.take(self.max_windows)) for sid, s in self.streams.items() if s.pending or s.ended]
        segments = [seg for _, _, segs in due for seg in segs]
        size = max(-(-len(segments) // self.workers), 1)
        shards = [segments[i : i + size] for i in range(0, len(segments), size)]
        scored = self._pool.map(self._score, shards) if self._pool and len(shards) > 1 else map(self._score, shards)
        probs, levels = _join(list(scored))
        out: dict[Hashable, list[Event]] = {}
        i = 0
        for sid, stream, segs in due:
            out[sid] = stream.events(segs, probs[i : i + len(segs)], levels[i : i + len(segs)])
            i += len(segs)
            if stream.ended and not stream.pending:
                out[sid] += stream.close()
                del self.streams[sid]
        return out

    def warm_up(self, rates: tuple[int, ...] = (8_000,)) -> None:
        """Run the model and a resampler per rate once: first runs are slow (allocation, lazy imports)."""
        for rate in rates:
            stream = Stream(self.config, rate)
            stream.push(np.full(rate * 2, 0.1, dtype=np.float32))
            stream.finish()
            self._score(stream.take())

    def close(self) -> None:
        """Stop the scoring threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (probs, levels) pairs in order."""
    return np.concatenate([np.zeros(0), *(p for p, _ in parts)]), np.concatenate(
        [np.zeros(0), *(lv for _, lv in parts)]
    )
