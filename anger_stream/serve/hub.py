"""The hub: an asyncio ticker around the call core.

On the event loop: `Calls` (calls.py), which buffers each call's audio bytes and keeps its books, and
`Hub`, which wakes when a call has a window due, pauses and resumes reading from calls that are ahead, and
hands events to the sink. On one scoring thread: `ScoringThread`, the only way to the `StreamSet` (decoding,
resampling, the model). The two exchange immutable batches (`Feed`s in, `Scored` out), one at a time, so
no state is shared between the threads. While the model runs, the event loop keeps reading sockets; audio
arriving meanwhile goes into the next batch, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from ..calls import CallEvent, Calls
from ..events import Event, Status, Window
from ..streams import Feed, Scored, StreamSet
from .log import log

Sink = Callable[[list[CallEvent]], None]
"""Where events go: JSON lines on stdout (serve/command.py), or an application's own handler."""
FINAL_STATES = ("end", "error", "interrupted")
"""The states of a call's last status line."""
TICK_INTERVAL_S = 0.04
"""Least time between the starts of two ticks. Calls' windows fall due at every moment; ticking for each
as it comes made ticks of one or two windows back to back, each paying the tick's fixed cost (the thread
hand-overs, the numpy calls over all streams). Waiting for the rest of this interval gathers the windows due
meanwhile into one tick, for at most this much more latency (docs/telephony.md has the A/B)."""


@dataclass(frozen=True)
class Tick:
    """One pass of the scoring thread, as the hub saw it (what `serve --metrics` counts besides the events)."""

    windows: int  # windows the model scored (silent ones are not scored)
    seconds: float  # how long scoring took
    late: bool  # longer than a hop: the lines fall behind the audio
    latencies: tuple[float, ...]  # per window line: seconds from the arrival of the audio that made it due


def tee(*sinks: Sink) -> Sink:
    """One sink that hands every batch of events to each of `sinks` in turn."""

    def sink(events: list[CallEvent]) -> None:
        for each in sinks:
            each(events)

    return sink


class Reader(Protocol):
    """What the hub needs of a call's connection for flow control."""

    def hold(self, reason: str) -> None: ...

    def release(self, reason: str) -> None: ...


class ScoringThread:
    """The StreamSet, reachable only through `run`, which scores one batch at a time on a thread of its own."""

    def __init__(self, streams: StreamSet) -> None:
        self._streams = streams
        self.hop_s = streams.config.hop_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anger-tick")

    async def run(self, feeds: tuple[Feed, ...]) -> Scored:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._streams.run, feeds)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._streams.close()


class Hub:
    """Calls in, events out: ticks the scoring thread whenever a call has a window due or has ended."""

    def __init__(
        self,
        calls: Calls,
        scoring: ScoringThread,
        sink: Sink,
        on_tick: Callable[[Tick], None] | None = None,
        interval: float = TICK_INTERVAL_S,
    ) -> None:
        self.calls = calls
        self.interval = interval
        self.scoring = scoring
        self._sink = sink
        self._on_tick = on_tick
        self.failure: Exception | None = None  # the sink failed (e.g. stdout closed): the server stops
        self.failed = asyncio.Event()
        self._on_events: dict[str, Callable[[list[Event]], None]] = {}
        self._readers: dict[str, Reader] = {}
        self._held: dict[str, asyncio.TimerHandle | None] = {}  # calls not being read, and their pace timer
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._warned = -3600.0

    def emit(self, events: list[CallEvent]) -> None:
        """Hand events to the sink; if it fails, remember why and stop serving (nothing more is emitted)."""
        if self.failure is not None or not events:
            return
        try:
            self._sink(events)
        except Exception as exc:  # StdoutClosed, or whatever a custom sink raises
            self.failure = exc
            self.failed.set()

    def check_free(self, call_id: str) -> None:
        self.calls.check_free(call_id)

    def open(
        self,
        call_id: str,
        sample_rate: int,
        encoding: str,
        info: dict[str, Any],
        reader: Reader,
        on_events: Callable[[list[Event]], None] | None = None,
    ) -> None:
        """Start a call (its start status line); DuplicateCall if the id is being served. `reader` is paused
        and resumed to keep the call within its flow-control bounds; `on_events` gets its events too."""
        events = self.calls.open(call_id, sample_rate, encoding, info, time.monotonic())
        self._readers[call_id] = reader
        if on_events is not None:
            self._on_events[call_id] = on_events
        self._idle.clear()
        self.emit(events)

    def push(self, call_id: str, data: bytes, now: float = 0.0) -> None:
        """Audio bytes of a call as received at `now` (time.monotonic(), whole samples); its reader is held if
        the call is ahead."""
        within = self.calls.receive(call_id, data, now)
        if self.calls.due:
            self._wake.set()
        if not within and call_id not in self._held:
            self._check(call_id)

    def dtmf(self, call_id: str, digit: str) -> None:
        self.emit(self.calls.dtmf(call_id, digit))

    def end(self, call_id: str, state: str, info: dict[str, Any] | None = None) -> None:
        """End a call: its last windows are scored, then its final status line. Later calls are no-ops."""
        self.calls.end(call_id, state, info)
        self._wake.set()

    def t(self, call_id: str) -> float:
        return self.calls.t(call_id)

    def _check(self, call_id: str) -> None:
        """Hold or release a call's reader as its flow-control bounds say."""
        timer = self._held.pop(call_id, None)
        if timer is not None:
            timer.cancel()
        reader = self._readers.get(call_id)
        wait = self.calls.wait(call_id, time.monotonic())
        if reader is None:
            return
        if wait == 0.0:
            reader.release("flow")
            return
        reader.hold("flow")
        loop = asyncio.get_running_loop()
        self._held[call_id] = None if wait is None else loop.call_later(wait, self._check, call_id)

    async def idle(self) -> None:
        """Wait until every call has ended and been reported."""
        await self._idle.wait()

    async def run(self) -> None:
        """Tick whenever a call has a window due or has ended (forever)."""
        last = -self.interval
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if not self.calls.due:
                    continue
                pause = last + self.interval - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)
                last = time.monotonic()
                feeds = self.calls.take()
                since = {
                    f.stream_id: self.calls.due_since(f.stream_id) for f in feeds if self._on_tick and not f.ending
                }
                started = time.monotonic()
                events = self.calls.settle(await self.scoring.run(feeds))
                elapsed = time.monotonic() - started
                self._check_pace(elapsed, len(events))
                self._publish(events)
                if self._on_tick is not None:
                    self._on_tick(self._tick(events, since, elapsed))
                for call_id in [c for c, timer in self._held.items() if timer is None]:
                    self._check(call_id)
                if self.calls.due:
                    self._wake.set()
        finally:
            self.scoring.close()

    def _publish(self, events: list[CallEvent]) -> None:
        self.emit(events)
        per_call: dict[str, list[Event]] = {}
        for call_id, e in events:
            if call_id in self._on_events:
                per_call.setdefault(call_id, []).append(e)
        for call_id, evs in per_call.items():
            self._on_events[call_id](evs)
        for call_id in {c for c, _ in events if c not in self.calls and c in self._readers}:  # ended
            del self._readers[call_id]
            self._on_events.pop(call_id, None)
            timer = self._held.pop(call_id, None)
            if timer is not None:
                timer.cancel()
        if not len(self.calls):
            self._idle.set()

    def _tick(self, events: list[CallEvent], since: dict[str, float], elapsed: float) -> Tick:
        now = time.monotonic()
        windows = [(call_id, e) for call_id, e in events if isinstance(e, Window)]
        latencies = tuple(now - since[call_id] for call_id, _ in windows if call_id in since)
        scored = sum(e.p is not None for _, e in windows)
        return Tick(scored, elapsed, elapsed > self.scoring.hop_s, latencies)

    def _check_pace(self, elapsed: float, n_events: int) -> None:
        """Warn (at most once a minute) when scoring takes longer than a hop: latency then keeps growing."""
        hop = self.scoring.hop_s
        if elapsed > hop and time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log(f"falling behind: a tick of {n_events} events took {elapsed:.2f} s (hop {hop:g} s); too many calls")


def error_line(call_id: str, message: str) -> list[CallEvent]:
    """The final status of a call that failed before it started."""
    return [(call_id, Status("error", 0.0, {"error": message}))]
