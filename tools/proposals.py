"""Proposed changes to anger_stream, as subclasses that run next to the current code for measurement.

Each proposal mirrors a proposed diff to anger_stream; tests/test_bench.py checks
that it gives the same results as the code it would replace. tools/bench_opt.py measures them. Once a
proposal is applied in anger_stream, its code here should go.
"""

from __future__ import annotations

from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from anger_stream import audio, streams
from anger_stream.detector import DetectorConfig, Segment, Stream
from anger_stream.detector import score_windows as current_score
from anger_stream.events import Event
from anger_stream.model import AngerModel
from tools.timing import session


class FastStream(Stream):
    """Proposed Stream.push: replace non-finite samples only when there are any (np.isfinite is ~4x cheaper)."""

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
        if self._resampler is not None:
            x = self._resampler.process(x)
        self.pending += self.windower.push(x)


def score_windows(model: AngerModel, segments: list[Segment], config: DetectorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Proposed detector.score_windows: a full window's level and normalisation from one centred float64 copy.

    dBFS is the centred mean square that normalise() needs anyway, so each full window is converted,
    centred and squared once instead of twice, and written straight into the batch (one window at a time:
    a whole batch in float64 falls out of the cache). Partial (end-of-stream) windows keep the old path:
    their level is over their real samples, their input zero-padded. Same results, bit for bit.
    """
    n = len(segments)
    levels = np.empty(n, dtype=np.float64)
    batch = np.empty((n, config.window), dtype=np.float32)
    floor = 10.0 ** (audio.SILENCE_DBFS / 10.0)
    target = 10.0 ** (audio.TARGET_DBFS / 20.0) * audio.FULL_SCALE
    for i, s in enumerate(segments):
        if len(s.audio) != config.window:
            levels[i] = audio.dbfs(s.audio)
            batch[i] = audio.prepare_window(s.audio, config.window)
            continue
        x = s.audio.astype(np.float64)
        x -= x.mean()
        ms = np.mean(np.square(x))  # np.var's arithmetic: the same level, bit for bit
        levels[i] = 10.0 * np.log10(max(ms, floor))
        rms = np.sqrt(ms)
        np.multiply(x, target / rms if rms > 1e-10 else 0.0, out=batch[i], casting="same_kind")
    probs = np.full(n, np.nan, dtype=np.float64)
    loud = np.flatnonzero(levels >= config.min_dbfs)
    if len(loud):
        probs[loud] = model.predict(batch if len(loud) == n else batch[loud])
    return probs, levels


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate (probs, levels) pairs."""
    return np.concatenate([np.zeros(0)] + [p for p, _ in parts]), np.concatenate(
        [np.zeros(0)] + [lv for _, lv in parts]
    )


class ProposedStreamSet(streams.StreamSet):
    """StreamSet with the proposals switched on one by one (all off: the current StreamSet's behaviour).

    fast_push: FastStream; fast_score: the fused score_windows above; max_batch: windows per model call
    (small batches keep the activations in cache); workers: threads scoring shards of the due windows at
    once (onnxruntime releases the GIL: two 1-thread calls use two cores, where one small-batch call with
    2 intra-op threads hardly speeds up).
    """

    def __init__(
        self,
        model: AngerModel,
        max_batch: int = 256,
        workers: int = 1,
        fast_push: bool = False,
        fast_score: bool = False,
    ) -> None:
        super().__init__(model, None, max_batch)
        self.workers = workers
        self.pool = ThreadPoolExecutor(workers) if workers > 1 else None
        self.stream_class = FastStream if fast_push else Stream
        self.score = score_windows if fast_score else current_score

    def add(self, stream_id: Hashable, sample_rate: int = audio.SAMPLE_RATE) -> None:
        if stream_id in self.streams:
            raise KeyError(f"stream {stream_id!r} exists already")
        self.streams[stream_id] = self.stream_class(self.config, sample_rate)

    def _score(self, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        return _join(
            [
                self.score(self.model, segments[i : i + self.max_batch], self.config)
                for i in range(0, len(segments), self.max_batch)
            ]
        )

    def tick(self) -> dict[Hashable, list[Event]]:
        due = [(sid, s, s.take()) for sid, s in self.streams.items() if s.pending or s.ended]
        segments = [seg for _, _, segs in due for seg in segs]
        if self.pool is None:
            probs, levels = self._score(segments)
        else:
            size = -(-len(segments) // self.workers) or 1
            probs, levels = _join(
                list(self.pool.map(self._score, [segments[i : i + size] for i in range(0, len(segments), size)]))
            )
        out: dict[Hashable, list[Event]] = {}
        i = 0
        for sid, stream, segs in due:
            out[sid] = stream.events(segs, probs[i : i + len(segs)], levels[i : i + len(segs)])
            i += len(segs)
            if stream.ended:
                out[sid] += stream.close()
                del self.streams[sid]
        return out


class TunedModel(AngerModel):
    """AngerModel with intra-op spinning switched (the proposed model.py option), for measurement."""

    def __init__(self, path: str, threads: int, spinning: bool) -> None:
        super().__init__(path, threads)
        self.session = session(path, threads, spinning)
