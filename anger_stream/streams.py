"""Many independent streams (calls, microphones), scored together: one batched model call per tick."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from . import audio
from .detector import DetectorConfig, Stream, score_windows
from .events import Event
from .model import AngerModel


class StreamSet:
    """Holds streams by id; `push` buffers audio, `tick` scores every window due across all streams.

    Each stream has its own resampler, window buffer, silence gate and event state, so one stream's input
    never affects another's results, which equal those of a single `AngerDetector` on the same audio.
    """

    def __init__(self, model: AngerModel, config: DetectorConfig | None = None, max_batch: int = 256) -> None:
        self.model = model
        self.config = config or DetectorConfig()
        self.max_batch = max_batch
        self.streams: dict[Hashable, Stream] = {}

    def add(self, stream_id: Hashable, sample_rate: int = audio.SAMPLE_RATE) -> None:
        if stream_id in self.streams:
            raise KeyError(f"stream {stream_id!r} exists already")
        self.streams[stream_id] = Stream(self.config, sample_rate)

    def push(self, stream_id: Hashable, samples: np.ndarray) -> None:
        """Queue float samples in [-1, 1] (or integer PCM) for one stream."""
        self.streams[stream_id].push(audio.to_float(samples))

    def end(self, stream_id: Hashable) -> None:
        """Mark a stream finished: its last windows and closing events come with the next tick."""
        self.streams[stream_id].finish()

    def __len__(self) -> int:
        return len(self.streams)

    def tick(self) -> dict[Hashable, list[Event]]:
        """Score all due windows of all streams in batches; ended streams are removed afterwards."""
        due = [(sid, s, s.take()) for sid, s in self.streams.items() if s.pending or s.ended]
        segments = [seg for _, _, segs in due for seg in segs]
        probs = np.zeros(0)
        levels = np.zeros(0)
        for i in range(0, len(segments), self.max_batch):
            p, lv = score_windows(self.model, segments[i : i + self.max_batch], self.config)
            probs, levels = np.concatenate([probs, p]), np.concatenate([levels, lv])
        out: dict[Hashable, list[Event]] = {}
        i = 0
        for sid, stream, segs in due:
            out[sid] = stream.events(segs, probs[i : i + len(segs)], levels[i : i + len(segs)])
            i += len(segs)
            if stream.ended:
                out[sid] += stream.close()
                del self.streams[sid]
        return out
