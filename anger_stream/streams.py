"""The detector core for any number of independent streams (calls, microphones, channels) sharing one model.

All streams' recent 16 kHz audio lives in one 2-D array (`buffers.Rows`, a row per stream); streams at
another rate keep their input in a 2-D array per rate and are resampled together. A tick finds every
stream's due windows with array arithmetic, cuts them with one gather per model batch, measures (the silence
gate) and normalises them in one pass, scores them in small batches on worker threads, and steps every
stream's event state at once (`tracker.Trackers`). Python objects are built only for what leaves the core:
the windows and the anger events that changed.

Each stream has its own resampler state, window position, silence gate and event state, so one stream's input
never affects another's results: a stream's events are the same whatever else is in the set, and whatever
its chunks (`AngerDetector` is a set of one stream).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from . import audio, codec
from .buffers import Rows
from .config import DetectorConfig, check_rate, window_count
from .events import Event, Window
from .model import AngerModel
from .resampler import Resampler
from .tracker import Trackers


@dataclass(frozen=True)
class Feed:
    """One stream's input for a tick: new audio as raw bytes (whole samples), and whether the stream ended."""

    stream_id: Hashable
    sample_rate: int
    encoding: str  # a key of codec.WIDTHS
    data: bytes
    ending: bool
    interrupted: bool = False  # with ending: the stream was stopped rather than ended by its source


@dataclass(frozen=True)
class Scored:
    """What a tick of `StreamSet.run` gives back: the events of each stream fed, and for each stream still
    open, how many input samples (at its own rate) it must have received for its next unscored window."""

    events: dict[Hashable, list[Event]]
    due_at: dict[Hashable, int]


RESAMPLE_GRAIN = 4
"""Streams resampled on one thread at least (fewer are not worth handing to another thread)."""
MAX_BATCH_SAMPLES = 64 * audio.WINDOW
"""Samples in one model call at most: 64 default windows (a 10 s window goes 7 at a time)."""
PREPARE = 16
"""Windows cut, measured and normalised together before their model calls (fewer numpy calls per window)."""


def _grown(a: np.ndarray, n: int) -> np.ndarray:
    """`a` extended with zeros to length n (unchanged if long enough)."""
    return a if len(a) >= n else np.concatenate([a, np.zeros(n - len(a), dtype=a.dtype)])


class _Lane:
    """The streams at one input rate other than 16 kHz: their input in rows, resampled together each tick."""

    def __init__(self, rate: int, width: int) -> None:
        self.resampler = Resampler(rate, audio.SAMPLE_RATE)
        self.rows = Rows(width)
        self.done = np.zeros(0, dtype=np.int64)  # outputs produced, per row
        self.slot = np.zeros(0, dtype=np.int64)  # the StreamSet slot of each row
        self.ended = np.zeros(0, dtype=bool)
        self.used = np.zeros(0, dtype=bool)

    def open(self, slot: int) -> int:
        row = self.rows.open()
        n = len(self.rows)
        self.done, self.slot, self.ended, self.used = (
            _grown(a, n) for a in (self.done, self.slot, self.ended, self.used)
        )
        self.done[row], self.slot[row], self.ended[row], self.used[row] = 0, slot, False, True
        return row

    def close(self, row: int) -> None:
        self.used[row] = False
        self.rows.close(row)

    def push(self, row: int, x: np.ndarray) -> None:
        self.rows.write(row, x, int(self.resampler.first_input(int(self.done[row]))))

    def due(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows with outputs now determined (all of them once ended), and how many outputs each then has."""
        n = len(self.done)
        stop = self.resampler.ready(self.rows.end[:n], self.ended)
        which = np.flatnonzero(self.used & (stop > self.done))
        return which, stop[which]

    def produce(self, which: np.ndarray, stop: np.ndarray) -> list[np.ndarray]:
        """The new 16 kHz samples of these rows, up to `stop` (safe on several threads for disjoint rows)."""
        return self.resampler.produce(self.rows, which, self.done[which], stop)


class StreamSet:
    """Holds streams by id; `push` buffers audio, `tick` scores the windows due across all streams.

    Windows are scored in small batches (`max_batch`: larger ones push the activations out of the CPU caches;
    fewer for long windows, so that a batch holds at most MAX_BATCH_SAMPLES and the model's memory stays that
    of the default windows whatever the window)
    on `workers` threads at once (the calling thread is one of them). Give it a one-thread model:
    onnxruntime and numpy release the GIL, so two one-thread calls use two cores, which two intra-op threads
    on a small batch do not (docs/benchmarks.md). `max_windows`: at most this many windows of one stream per
    tick (the rest stay due for the next ticks), so a stream that sent a lot at once cannot make a tick long
    for the others. `held_s`: the most audio a stream will hold beyond the start of its next window, a push
    included (a server that hands each stream a bounded amount per tick knows it): every stream's rows are
    made wide enough for it plus a hop, so that they need not be widened, a copy of all streams' rows, while
    streams are live; without it they start at the window and two hops (16 kHz) or a second (other rates),
    and widths double as needed.
    """

    def __init__(
        self,
        model: AngerModel,
        config: DetectorConfig | None = None,
        max_batch: int = 4,
        workers: int = 2,
        max_windows: int | None = None,
        held_s: float | None = None,
    ) -> None:
        self.model = model
        self.config = c = config or DetectorConfig()
        self.max_batch = max(1, min(max_batch, MAX_BATCH_SAMPLES // c.window))
        self.workers = workers
        self.max_windows = max_windows
        self._pool = ThreadPoolExecutor(workers - 1, thread_name_prefix="anger-score") if workers > 1 else None
        self.held_s = held_s
        self._ring = Rows(self._width(audio.SAMPLE_RATE))  # 16 kHz audio, a row (slot) per stream
        self._next = np.zeros(0, dtype=np.int64)  # absolute start of each slot's next window
        self._ended = np.zeros(0, dtype=bool)
        self._interrupted = np.zeros(0, dtype=bool)
        self._used = np.zeros(0, dtype=bool)
        self._slots: dict[Hashable, int] = {}
        self._ids: list[Hashable] = []
        self._lane_of: list[tuple[_Lane, int] | None] = []
        self._lanes: dict[int, _Lane] = {}
        self._trackers = Trackers(c)

    def add(self, stream_id: Hashable, sample_rate: int = audio.SAMPLE_RATE) -> None:
        """A new stream whose samples come at `sample_rate`; KeyError if the id is in use."""
        if stream_id in self._slots:
            raise KeyError(f"stream {stream_id!r} exists already")
        sample_rate = check_rate(sample_rate)
        slot = self._ring.open()
        n = len(self._ring)
        self._next, self._ended, self._interrupted, self._used = (
            _grown(a, n) for a in (self._next, self._ended, self._interrupted, self._used)
        )
        self._trackers.grow(n)
        self._ids += [None] * (n - len(self._ids))
        self._lane_of += [None] * (n - len(self._lane_of))
        self._next[slot], self._ended[slot], self._interrupted[slot], self._used[slot] = 0, False, False, True
        self._trackers.reset(slot)
        self._slots[stream_id], self._ids[slot] = slot, stream_id
        if sample_rate != audio.SAMPLE_RATE:
            lane = self._lanes.get(sample_rate) or self._lanes.setdefault(
                sample_rate, _Lane(sample_rate, self._width(sample_rate))
            )
            self._lane_of[slot] = (lane, lane.open(slot))

    def _width(self, rate: int) -> int:
        """The first width of the rows of streams at `rate` (in samples at that rate)."""
        if self.held_s is None:
            return self.config.window + 2 * self.config.hop if rate == audio.SAMPLE_RATE else rate
        return round((self.held_s + self.config.hop_s) * rate)

    def push(self, stream_id: Hashable, samples: np.ndarray) -> None:
        """Queue float samples in [-1, 1] (or integer PCM) for one stream: mono, or (frames, channels) mixed
        down, checked as `AngerDetector.feed` checks them (`audio.as_mono`). Non-finite samples count as silence
        (and samples beyond +-audio.SANE_PEAK are clipped to it): a window holding one is measured again
        without it, a block of input to the resampler is cleaned before filtering."""
        slot = self._slots[stream_id]
        x = audio.as_mono(samples)
        if self._ended[slot]:
            raise ValueError(f"stream {stream_id!r} has ended")
        lane = self._lane_of[slot]
        if lane is None:
            self._ring.write(slot, x, int(self._next[slot]))
        else:
            lane[0].push(lane[1], x)

    def end(self, stream_id: Hashable, interrupted: bool = False) -> None:
        """Mark a stream finished: its last windows and closing events come with the next ticks. A segment
        still open then ends with ended_by "input_end", or "interrupted" if the stream was stopped."""
        slot = self._slots[stream_id]
        self._ended[slot] = True
        self._interrupted[slot] = interrupted
        lane = self._lane_of[slot]
        if lane is not None:
            lane[0].ended[lane[1]] = True

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._slots

    def t(self, stream_id: Hashable) -> float:
        """A stream's time in seconds: the 16 kHz samples it has given so far."""
        return int(self._ring.end[self._slots[stream_id]]) / audio.SAMPLE_RATE

    def due_at(self, stream_id: Hashable) -> int:
        """Samples at the stream's own rate it must have received for its next unscored window (the
        resampler's look-ahead included)."""
        slot = self._slots[stream_id]
        end = int(self._next[slot]) + self.config.window
        lane = self._lane_of[slot]
        return lane[0].resampler.inputs_for(end) if lane is not None else end

    def run(self, feeds: tuple[Feed, ...]) -> Scored:
        """Feed raw audio (streams are added when first fed), end streams, and tick."""
        for f in feeds:
            if f.stream_id not in self._slots:
                self.add(f.stream_id, f.sample_rate)
            if f.data:
                self.push(f.stream_id, codec.decode(f.data, f.encoding))
            if f.ending:
                self.end(f.stream_id, f.interrupted)
        events = self.tick()
        due_at = {f.stream_id: self.due_at(f.stream_id) for f in feeds if f.stream_id in self._slots}
        return Scored(events, due_at)

    def tick(self) -> dict[Hashable, list[Event]]:
        """Score the due windows of all streams; ended streams are removed once fully scored (with the
        anger_end of a segment still open)."""
        c, ring = self.config, self._ring
        for lane in self._lanes.values():
            self._resample(lane)
        n = len(self._used)
        end, nxt, used = ring.end[:n], self._next, self._used
        ended = self._ended & used
        remaining = np.where(used, window_count(end - nxt, ended, c), 0)
        take = remaining if self.max_windows is None else np.minimum(remaining, self.max_windows)
        slots = np.flatnonzero((take > 0) | ended)
        k = take[slots]
        w_slot = np.repeat(slots, k)
        w_round = np.arange(len(w_slot)) - np.repeat(np.cumsum(k) - k, k)
        w_start = nxt[w_slot] + w_round * c.hop
        w_len = np.minimum(c.window, end[w_slot] - w_start)
        probs, raised, levels = self._score(w_slot, w_start - ring.base[w_slot], w_len)
        nxt[slots] += k * c.hop
        t_start, t_end = w_start / audio.SAMPLE_RATE, (w_start + w_len) / audio.SAMPLE_RATE
        changed: dict[int, Event] = {}
        for r in range(int(k.max()) if len(k) else 0):
            sel = np.flatnonzero(w_round == r)
            for i, e in self._trackers.step(w_slot[sel], probs[sel], raised[sel], t_start[sel], t_end[sel]):
                changed[int(sel[i])] = e
        ids, threshold = self._ids, c.threshold
        out: dict[Hashable, list[Event]] = {ids[s]: [] for s in slots.tolist()}
        columns = (w_slot.tolist(), t_start.tolist(), t_end.tolist(), probs.tolist(), raised.tolist(), levels.tolist())
        for i, (s, ts, te, p, r, level) in enumerate(zip(*columns, strict=True)):
            events = out[ids[s]]
            # p != p: NaN (silent), r != r: NaN (silent, or the model gives no p(raised voice))
            events.append(Window(ts, te, None if p != p else p, p >= threshold, level, None if r != r else r))
            if i in changed:
                events.append(changed[i])
        for s in slots[ended[slots] & (take[slots] == remaining[slots])].tolist():
            if self._trackers.active[s]:
                ended_by = "interrupted" if self._interrupted[s] else "input_end"
                out[ids[s]].append(self._trackers.close(s, int(end[s]) / audio.SAMPLE_RATE, ended_by))
            self._remove(s)
        return out

    def _resample(self, lane: _Lane) -> None:
        """A lane's new 16 kHz samples, resampled on the worker threads, into the ring."""
        which, stop = lane.due()
        outs: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(which)

        def resample(lo: int, hi: int) -> None:
            outs[lo:hi] = lane.produce(which[lo:hi], stop[lo:hi])

        self._parallel(resample, len(which), RESAMPLE_GRAIN)
        lane.done[which] = stop
        for slot, y in zip(lane.slot[which].tolist(), outs, strict=True):
            self._ring.write(slot, y, int(self._next[slot]))

    def _remove(self, slot: int) -> None:
        del self._slots[self._ids[slot]]
        self._ids[slot] = None
        self._used[slot] = False
        self._ring.close(slot)
        lane = self._lane_of[slot]
        if lane is not None:
            lane[0].close(lane[1])
            self._lane_of[slot] = None

    def _score(
        self, slots: np.ndarray, cols: np.ndarray, lens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p, p(raised voice), dBFS) of windows given by row, column and length in the ring (both p NaN below
        the silence gate, the second also for a model without it), in batches of max_batch, split between the
        worker threads and this one."""
        n = len(slots)
        probs, raised, levels = np.full(n, np.nan), np.full(n, np.nan), np.empty(n)
        if not n:
            return probs, raised, levels
        window, step = self.config.window, self.max_batch
        prep = step * -(-PREPARE // step)  # windows cut and normalised at a time: whole model batches
        view = sliding_window_view(self._ring.buf, window, axis=1)

        def shard(lo: int, hi: int) -> None:
            for i in range(lo, hi, prep):
                j = min(i + prep, hi)
                batch = self._cut(view, slots[i:j], cols[i:j], lens[i:j])
                with np.errstate(invalid="ignore", over="ignore"):  # non-finite windows: found and redone below
                    lv, prepared = audio.measure_and_normalise(batch)
                bad = np.flatnonzero(~np.isfinite(lv))  # a non-finite sample makes the whole level so
                if len(bad):
                    batch[bad] = audio.sane(batch[bad])
                    lv[bad], prepared[bad] = audio.measure_and_normalise(batch[bad])
                for s in np.flatnonzero(lens[i:j] < window).tolist():  # a stream's last windows: real samples
                    lv[s] = audio.dbfs(batch[s, : lens[i + s]])
                levels[i:j] = lv
                loud = np.flatnonzero(lv >= self.config.min_dbfs)
                scored = prepared if len(loud) == j - i else prepared[loud]
                for a in range(0, len(loud), step):
                    at = i + loud[a : a + step]
                    probs[at], raised[at] = self.model.score(scored[a : a + step])

        self._parallel(shard, n, step)
        return probs, raised, levels

    def _parallel(self, work: Callable[[int, int], None], n: int, grain: int) -> None:
        """work(lo, hi) over range(n) in up to `workers` contiguous shards of at least `grain` items, on the
        worker threads and this one (a thread's hand-over costs more than a small shard's work)."""
        if not n:
            return
        size = max(-(-n // self.workers), grain)
        bounds = [(lo, min(lo + size, n)) for lo in range(0, n, size)]
        futures = [self._pool.submit(work, *b) for b in bounds[1:]] if self._pool else []
        for b in bounds if self._pool is None else bounds[:1]:
            work(*b)
        for f in futures:
            f.result()

    def _cut(self, view: np.ndarray, slots: np.ndarray, cols: np.ndarray, lens: np.ndarray) -> np.ndarray:
        """Windows from the ring, one gather; short last windows zero-padded."""
        window = self.config.window
        if (lens == window).all():
            return view[slots, cols]
        batch = np.zeros((len(slots), window), dtype=np.float32)
        for j, (s, col, n) in enumerate(zip(slots.tolist(), cols.tolist(), lens.tolist(), strict=True)):
            batch[j, :n] = self._ring.buf[s, col : col + n]
        return batch

    def warm_up(self, rates: tuple[int, ...] = (8_000,)) -> None:
        """Run the model on a full batch in every scoring thread at once, and a resampler per rate: first runs
        are slow (allocation, lazy imports), and the memory of the busiest tick is taken now, not during a call."""
        full = np.zeros((self.workers * self.max_batch, self.config.window), dtype=np.float32)
        self._parallel(lambda lo, hi: self.model.score(full[lo:hi]), len(full), self.max_batch)
        probe = StreamSet(self.model, self.config, self.max_batch, workers=1)
        for rate in rates:
            probe.add(rate, rate)
            probe.push(rate, 0.1 * np.sin(np.arange(rate * 2) * 0.1).astype(np.float32))
            probe.end(rate)
        while len(probe):
            probe.tick()

    def close(self) -> None:
        """Stop the scoring threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
