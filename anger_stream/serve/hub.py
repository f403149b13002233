"""The hub between connections and the shared StreamSet: buffers each call's audio, ticks the set when
windows are due, and turns the results into JSON lines.

Connection handlers (server.py, websocket.py) only parse and push audio bytes; the hub pushes a call's
buffered audio into the set when a window of it is due and runs `tick()` (one batched model call for every
due window of every call) in a worker thread, so the event loop keeps reading sockets while the model runs.
Only the worker touches the set while a tick is under way; calls' audio bytes are decoded there too, once
per tick.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import ceil
from typing import Any

import numpy as np

from .. import audio
from ..detector import Stream, score_windows
from ..events import AngerStart, Event, Status, Window, to_json
from ..sources import raw
from ..streams import StreamSet

ENCODINGS = ("s16le", "mulaw", "alaw")
"""How calls' audio bytes may come: telephony's formats among sources.raw's (their decoding cannot fail)."""


def log(message: str) -> None:
    """One line for people on stderr."""
    print(f"anger-stream serve: {message}", file=sys.stderr, flush=True)


class DuplicateCall(Exception):
    """A call id that is already being served."""


@dataclass
class Call:
    """The hub's view of one call: audio waiting for the stream set and what to report at its end."""

    call_id: str
    sample_rate: int
    encoding: str  # one of ENCODINGS
    on_events: Callable[[list[Event]], None] | None
    chunks: list[bytes] = field(default_factory=list)
    received: int = 0  # input samples received
    pushed: int = 0  # input samples handed to the stream set
    due_at: int = 0  # input samples at which the next window is complete
    added: bool = False
    ending: tuple[str, dict[str, Any]] | None = None
    t_end: float = 0.0
    counts: dict[str, int] = field(
        default_factory=lambda: {"windows": 0, "angry_windows": 0, "silent_windows": 0, "anger_segments": 0}
    )


class Hub:
    """Calls in, JSON lines out: buffers each call's audio and ticks the shared StreamSet when windows are due."""

    def __init__(self, streams: StreamSet, emit: Callable[[str], None], events_only: bool = False) -> None:
        self.streams = streams
        self._output = emit
        self.failure: Exception | None = None  # the output failed (e.g. stdout closed): the server stops
        self.failed = asyncio.Event()
        self.events_only = events_only
        self.calls: dict[str, Call] = {}
        self._ready: dict[str, Call] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anger-tick")
        self._warned = -3600.0

    def open(
        self,
        call_id: str,
        sample_rate: int,
        info: dict[str, Any],
        on_events: Callable[[list[Event]], None] | None = None,
        encoding: str = "s16le",
    ) -> None:
        """Start a call whose audio comes as `encoding` bytes (a start status line); DuplicateCall if the id
        is being served."""
        self.check_free(call_id)
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r} (known: {', '.join(ENCODINGS)})")
        call = Call(call_id, sample_rate, encoding, on_events)
        call.due_at = self._due_at(call, 0)
        self.calls[call_id] = call
        self._idle.clear()
        self.emit(to_json(Status("start", 0.0, {"sample_rate": sample_rate, **info}), call=call_id))

    def check_free(self, call_id: str) -> None:
        """DuplicateCall if a call with this id is being served."""
        if call_id in self.calls:
            raise DuplicateCall(f"call id {call_id!r} is already being served")

    def push(self, call_id: str, data: bytes) -> None:
        """Buffer whole samples of a call's audio, as received; wakes the ticker once a window is complete.

        Nothing is decoded here, on the event loop: the worker decodes each call's audio once per tick.
        """
        call = self.calls[call_id]
        if call.ending is not None or not data:
            return
        call.chunks.append(data)
        call.received += len(data) // raw.FORMATS[call.encoding]
        if call.received >= call.due_at:
            self._ready[call_id] = call
            self._wake.set()

    def end(self, call_id: str, state: str, info: dict[str, Any] | None = None) -> None:
        """End a call: its last windows are scored, then a final status line. Later calls are no-ops."""
        call = self.calls.get(call_id)
        if call is None or call.ending is not None:
            return
        call.ending = (state, info or {})
        call.t_end = call.received / call.sample_rate
        self._ready[call_id] = call
        self._wake.set()

    def emit(self, line: str) -> None:
        """One output line; if the output fails, remember why and stop serving (no more lines)."""
        if self.failure is not None:
            return
        try:
            self._output(line)
        except Exception as exc:  # StdoutClosed, or whatever a custom sink raises
            self.failure = exc
            self.failed.set()

    def note(self, call_id: str, status: Status) -> None:
        """A status line for a call at once (DTMF, an error before the call started)."""
        self.emit(to_json(status, call=call_id))

    def t(self, call_id: str) -> float:
        """Seconds of audio received for a call."""
        call = self.calls.get(call_id)
        return call.received / call.sample_rate if call else 0.0

    async def idle(self) -> None:
        """Wait until every call has ended and been reported."""
        await self._idle.wait()

    async def run(self) -> None:
        """Tick whenever a call has a window due or has ended (forever)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                ops = [(c, c.chunks, c.ending is not None) for c in self._ready.values()]
                self._ready = {}
                for call, _, _ in ops:
                    call.chunks, call.pushed = [], call.received
                started = time.monotonic()
                results, samples = await loop.run_in_executor(self._pool, self._work, ops)
                self._publish(ops, results, samples)
                self._check_pace(time.monotonic() - started, sum(map(len, results.values())))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _check_pace(self, elapsed: float, n_events: int) -> None:
        """Warn (at most once a minute) when scoring takes longer than a hop: latency then keeps growing."""
        hop = self.streams.config.hop_s
        if elapsed > hop and time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log(f"falling behind: a tick of {n_events} events took {elapsed:.2f} s (hop {hop:g} s); too many calls")

    def _work(self, ops: list[tuple[Call, list[bytes], bool]]) -> tuple[dict[Hashable, list[Event]], dict]:
        """In the worker thread: feed the set, end calls, tick. Returns events and 16 kHz samples per call."""
        samples = {}
        for call, chunks, ending in ops:
            if not call.added:
                self.streams.add(call.call_id, call.sample_rate)
                call.added = True
            if chunks:
                self.streams.push(call.call_id, raw.decode_raw(b"".join(chunks), call.encoding))
            if ending:
                self.streams.end(call.call_id)
            samples[call.call_id] = self.streams.streams[call.call_id].windower.samples
        return self.streams.tick(), samples

    def _due_at(self, call: Call, samples16: int) -> int:
        """Input samples needed for the next window after `samples16` samples at 16 kHz."""
        c = self.streams.config
        cut = 0 if samples16 < c.window else (samples16 - c.window) // c.hop + 1
        return ceil((c.window + cut * c.hop) * call.sample_rate / audio.SAMPLE_RATE)

    def _publish(self, ops, results: dict[Hashable, list[Event]], samples: dict) -> None:
        for call, _, ending in ops:
            events = results.get(call.call_id, [])
            call.due_at = self._due_at(call, samples[call.call_id])
            if not ending and call.ending is None and call.pushed < call.received >= call.due_at:
                self._ready[call.call_id] = call  # more audio arrived during the tick
                self._wake.set()
            for e in events:
                if isinstance(e, Window):
                    call.counts["windows"] += 1
                    call.counts["angry_windows"] += e.angry
                    call.counts["silent_windows"] += e.silent
                    if self.events_only:
                        continue
                call.counts["anger_segments"] += isinstance(e, AngerStart)
                self.emit(to_json(e, call=call.call_id))
            if call.on_events is not None and events:
                call.on_events(events)
            if ending:
                state, info = call.ending
                self.emit(to_json(Status(state, call.t_end, {**call.counts, **info}), call=call.call_id))
                del self.calls[call.call_id]
        if not self.calls:
            self._idle.set()


def warm_up(streams: StreamSet, rates: tuple[int, ...] = (8_000,)) -> None:
    """Run the model and each resampler once: first runs are slow (allocation, lazy imports), not on a call."""
    for rate in rates:
        stream = Stream(streams.config, rate)
        stream.push(np.full(rate * 2, 0.1, dtype=np.float32))
        stream.finish()
        score_windows(streams.model, stream.take(), streams.config)
