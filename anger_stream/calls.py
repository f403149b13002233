"""Many calls as one sans-I/O object: raw audio bytes in, typed (call id, event) pairs out.

`Calls` keeps the books of many calls, with no sockets, threads, clock or JSON (time comes in as an
argument, as in h11). It buffers each call's audio bytes as they arrive, knows which calls have a window due
(from what the scoring side last reported), hands the due audio over as an immutable batch (`take`), turns
the scored result into events and counts them for each call's final status line (`settle`). The scoring
side is a `StreamSet` (`StreamSet.run`: decode, resample, cut windows, run the model), which may run on
another thread: `take` and `settle` are the only places the two meet, and they exchange immutable values.

Flow control, for servers facing callers that send faster than real time:
- a call may be at most `max_ahead_s` of audio ahead of its scoring, and, past its first `burst_s` of audio,
  send at most `max_speed` times real time: `wait` says when the adapter should stop reading from it and
  when it may read again, so the sender's TCP window fills and the sender is paced;
- the `StreamSet` scores at most `MAX_WINDOWS_PER_TICK` windows of one call per tick, so a call with a
  backlog cannot make a tick long for the others, and `take` hands it at most `max_take_s` of a call's audio
  beyond what the call's next window needs: a large read waits here, as bytes, instead of widening every
  call's rows in the `StreamSet` (give it `held_s=config.window_s + MAX_TAKE_S`);
- DTMF status lines are capped per call (`DTMF_BURST` plus `DTMF_PER_S` per second of audio); the final
  status counts the digits dropped (`dtmf_dropped`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import codec
from .detector import check_rate
from .events import Counts, Event, Status
from .streams import Feed, Scored, StreamSet

CallEvent = tuple[str | None, Event]
"""An event and the call it belongs to (None: a line about the server itself, such as where it listens)."""

MAX_AHEAD_S = 3.0
"""Audio a call may have sent beyond its next unscored window before reading from it pauses."""
MAX_SPEED = 2.0
"""How much faster than real time a call may send once past its first BURST_S seconds of audio."""
BURST_S = 10.0
MAX_WINDOWS_PER_TICK = 2
"""Windows of one call scored per tick (give it to the StreamSet as `max_windows`)."""
MAX_TAKE_S = 1.2
"""Audio of a call handed to the scoring side per tick beyond what its next window needs: enough for the
MAX_WINDOWS_PER_TICK windows after it at the default hop (0.6 s); more would only wait in the StreamSet."""
DTMF_PER_S = 10.0
DTMF_BURST = 20


class ChannelId(str):
    """The id of one channel of a multi-channel call, scored as a stream of its own: the string "<call>#<channel>"
    (unique among the calls), which also knows its parts, so each of its lines carries "call" and "channel"."""

    call: str
    channel: int

    def __new__(cls, call: str, channel: int) -> ChannelId:
        self = super().__new__(cls, f"{call}#{channel}")
        self.call, self.channel = call, channel
        return self


def line_fields(call_id: str) -> dict[str, Any]:
    """The fields naming a call in its lines: {"call": id}, or, for one channel of a call, "call" and "channel"."""
    if isinstance(call_id, ChannelId):
        return {"call": call_id.call, "channel": call_id.channel}
    return {"call": call_id}


class DuplicateCall(Exception):
    """A call id that is already being served."""


@dataclass(eq=False)
class _Call:
    call_id: str
    sample_rate: int
    encoding: str
    opened_at: float
    width: int = 2  # bytes per sample
    chunks: list[bytes] = field(default_factory=list)  # received, not yet handed to the scoring side
    received: int = 0  # input samples received
    handed: int = 0  # input samples handed to the scoring side
    due_at: int = 0  # input samples at which the next unscored window is complete (as last reported)
    paced: float = 0.0  # input samples its pace allowed when last computed
    due_since: float = 0.0  # when its next unscored window became due (the `now` given to `receive`)
    limit: int = 0  # input samples it may receive before `wait` must be asked (both bounds, as last computed)
    ending: tuple[str, dict[str, Any]] | None = None  # final state and extra fields, once ended
    end_sent: bool = False
    counts: Counts = field(default_factory=Counts)
    dtmf_lines: int = 0
    dtmf_dropped: int = 0

    @property
    def t(self) -> float:
        """Seconds of audio received."""
        return self.received / self.sample_rate


class Calls:
    """The calls being served, by id: `open`, `receive`, `dtmf`, `end`; `take` and `settle` around scoring."""

    def __init__(
        self,
        max_ahead_s: float = MAX_AHEAD_S,
        max_speed: float = MAX_SPEED,
        burst_s: float = BURST_S,
        max_take_s: float = MAX_TAKE_S,
    ) -> None:
        self.max_ahead_s, self.max_speed, self.burst_s, self.max_take_s = max_ahead_s, max_speed, burst_s, max_take_s
        self._calls: dict[str, _Call] = {}
        self._ready: dict[str, _Call] = {}  # calls with a window due or an end to report
        self._taken: tuple[Feed, ...] | None = None  # handed to the scoring side, not yet settled
        self._taken_ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def check_free(self, call_id: str) -> None:
        """DuplicateCall if a call with this id is being served."""
        if call_id in self._calls:
            raise DuplicateCall(f"call id {call_id!r} is already being served")

    def open(self, call_id: str, sample_rate: int, encoding: str, info: dict[str, Any], now: float) -> list[CallEvent]:
        """Start a call whose audio comes as `encoding` bytes at `sample_rate`; its start status line.
        DuplicateCall if the id is being served, ValueError for an unusable encoding or rate."""
        self.check_free(call_id)
        if encoding not in codec.WIDTHS:
            raise ValueError(f"unknown encoding {encoding!r} (known: {', '.join(codec.WIDTHS)})")
        check_rate(sample_rate)
        call = self._calls[call_id] = _Call(call_id, sample_rate, encoding, now, codec.WIDTHS[encoding])
        self._bound(call, now)
        return [(call_id, Status("start", 0.0, {"sample_rate": sample_rate, **info}))]

    def receive(self, call_id: str, data: bytes, now: float = 0.0) -> bool:
        """Whole samples of a call's audio, as received at `now` (ignored once the call is ending). False when
        the call may be past its flow-control bounds: then ask `wait`."""
        call = self._calls[call_id]
        if call.ending is not None or not data:
            return True
        call.chunks.append(data)
        call.received += len(data) // call.width
        if call.received >= call.due_at and call_id not in self._taken_ids and call_id not in self._ready:
            call.due_since = now
            self._ready[call_id] = call
        return call.received <= call.limit

    def wait(self, call_id: str, now: float) -> float | None:
        """How long the adapter should stop reading from a call: 0.0 not at all; seconds, until its pace
        allows more; None, until a `settle` has scored some of its audio."""
        call = self._calls.get(call_id)
        if call is None or call.ending is not None:
            return 0.0
        self._bound(call, now)
        if call.received - call.due_at > self.max_ahead_s * call.sample_rate:
            return None
        return max((call.t - self.burst_s) / self.max_speed - (now - call.opened_at), 0.0)

    def _bound(self, call: _Call, now: float) -> None:
        """What the call may receive before its bounds must be checked again: the pace only grows with time,
        so a limit computed now stays safe until then."""
        call.paced = (self.burst_s + self.max_speed * (now - call.opened_at)) * call.sample_rate
        self._limit(call)

    def _limit(self, call: _Call) -> None:
        call.limit = int(min(call.due_at + self.max_ahead_s * call.sample_rate, call.paced))

    def dtmf(self, call_id: str, digit: str) -> list[CallEvent]:
        """A DTMF status line, unless the call has sent more digits than a keypad can."""
        call = self._calls[call_id]
        if call.ending is not None:
            return []
        if call.dtmf_lines >= DTMF_BURST + DTMF_PER_S * call.t:
            call.dtmf_dropped += 1
            return []
        call.dtmf_lines += 1
        return [(call_id, Status("dtmf", call.t, {"digit": digit}))]

    def end(self, call_id: str, state: str, info: dict[str, Any] | None = None) -> None:
        """End a call: its last windows are scored, then its final status (`state`, counts, `info`) follows.
        Ending a call twice, or one that is not open, does nothing."""
        call = self._calls.get(call_id)
        if call is None or call.ending is not None:
            return
        call.ending = (state, info or {})
        self._ready[call_id] = call

    def due_since(self, call_id: str) -> float:
        """When the audio completing the call's next unscored window arrived (the `now` of that `receive`): a
        window's latency is counted from there. For a call sending ahead of real time, when the first window
        of its backlog became due."""
        return self._calls[call_id].due_since

    def t(self, call_id: str) -> float:
        """Seconds of audio received for a call (0 if it is not open)."""
        call = self._calls.get(call_id)
        return call.t if call else 0.0

    @property
    def due(self) -> bool:
        """Whether some call has a window due or an end to report (and no batch is being scored)."""
        return bool(self._ready) and self._taken is None

    def take(self) -> tuple[Feed, ...]:
        """The due calls' audio for the scoring side (`StreamSet.run`); `settle` its result before the next."""
        if self._taken is not None:
            raise RuntimeError("the previous batch has not been settled")
        feeds = []
        for call in self._ready.values():
            data = b"".join(call.chunks)
            room = call.due_at + round(self.max_take_s * call.sample_rate) - call.handed
            data, rest = data[: max(room, 0) * call.width], data[max(room, 0) * call.width :]
            call.chunks = [rest] if rest else []
            call.handed += len(data) // call.width
            ending = call.ending is not None and not call.end_sent and not rest
            call.end_sent |= ending
            interrupted = ending and call.ending is not None and call.ending[0] == "interrupted"
            feeds.append(Feed(call.call_id, call.sample_rate, call.encoding, data, ending, interrupted))
        self._ready = {}
        self._taken = tuple(feeds)
        self._taken_ids = {f.stream_id for f in feeds}
        return self._taken

    def settle(self, scored: Scored) -> list[CallEvent]:
        """The events of the batch last taken, each call's final status once its last window is scored."""
        out: list[CallEvent] = []
        for feed in self._taken or ():
            call = self._calls[feed.stream_id]
            events = scored.events.get(call.call_id, [])
            call.counts.add(events)
            out += [(call.call_id, e) for e in events]
            if call.call_id in scored.due_at:
                call.due_at = scored.due_at[call.call_id]
                self._limit(call)
                if call.ending is not None or call.received >= call.due_at:
                    self._ready[call.call_id] = call
            elif call.ending is not None:  # the stream has closed
                state, info = call.ending
                dropped = {"dtmf_dropped": call.dtmf_dropped} if call.dtmf_dropped else {}
                out.append((call.call_id, Status(state, call.t, {**call.counts.to_dict(), **dropped, **info})))
                del self._calls[call.call_id]
        self._taken, self._taken_ids = None, set()
        return out

    def tick(self, streams: StreamSet) -> list[CallEvent]:
        """Score the due calls on this thread: `settle(streams.run(take()))`."""
        return self.settle(streams.run(self.take()))
