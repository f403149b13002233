"""What the supervisor's page shows (`serve --dashboard`), sans-I/O: the hub's events in, JSON-able views out.

`Board` follows one server process's calls from their events (a hub sink, on the event loop): each live
call's last p (and p(raised voice) when the model gives it), its open anger segment (since when, its
highest p) and its last closed one; a call that ended in an error or while angry is kept for ENDED_S with
how it ended; the anger events of the last EVENTS_S. `Board.snapshot` is a plain dict with wall times;
`merge` joins the snapshots of every worker into what the page draws, each call's state decided at `now`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..calls import CallEvent
from ..config import DetectorConfig
from ..events import AngerEnd, AngerStart, Status, Window
from .hub import FINAL_STATES

RECENT_S = 180.0
"""A call is "recently angry" for this long after its anger segment ended."""
ENDED_S = 120.0
"""A call that ended in an error or while angry stays on the page this long."""
EVENTS_S = 300.0
"""Anger events are listed this long (at most MAX_EVENTS of them)."""
MAX_EVENTS = 200
MAX_ENDED = 200
"""Ended calls kept per process at most (the oldest go first)."""
STATES = ("angry", "ended_angry", "recent", "error", "calm")
"""A call's state on the page, in the order the page lists them."""
AT_END_S = 0.05
"""An anger_end this close to the call's end (stream seconds) closed the segment because the call ended
(for anger_end events made without `ended_by`)."""


def _rounded(p: float | None) -> float | None:
    return None if p is None else round(p, 3)


@dataclass
class _Call:
    """One call as the page shows it; times of day are wall times (seconds since the epoch)."""

    started: float
    protocol: str
    peer: str
    t: float = 0.0  # stream seconds scored
    p: float | None = None  # the last window's (None: silent, or none yet)
    p_max: float = 0.0
    raised: float | None = None  # the last window's p(raised voice), for a model that gives it
    angry_since: float | None = None  # the open anger segment's start
    segment_max: float = 0.0  # the open segment's highest p
    segment_raised: float | None = None  # and p(raised voice), for a model that gives it
    last_anger: dict[str, Any] | None = None  # the last closed segment
    ended: float | None = None  # when the call ended (kept only when it ended in an error or while angry)
    end: dict[str, Any] | None = None  # how: its final state, and the error's kind and message

    def view(self, call_id: str) -> dict[str, Any]:
        return {
            "call": call_id,
            "protocol": self.protocol,
            "peer": self.peer,
            "started": self.started,
            "t": round(self.t, 1),
            "p": _rounded(self.p),
            "p_max": round(self.p_max, 3),
            "raised": _rounded(self.raised),
            "angry_since": self.angry_since,
            "segment_max": round(self.segment_max, 3),
            "segment_raised": _rounded(self.segment_raised),
            "last_anger": None if self.last_anger is None else dict(self.last_anger),  # a copy: read by another thread
            "ended": self.ended,
            "end": self.end,
        }


class Board:
    """The calls of one server process and its recent anger events, from the hub's events."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock  # wall time: the page shows times of day
        self._calls: dict[str, _Call] = {}
        self._ended: deque[str] = deque()  # calls kept after their end, oldest first
        self._recent: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)

    def events(self, events: list[CallEvent]) -> None:
        """A hub sink."""
        for call_id, e in events:
            call = self._calls.get(call_id) if call_id is not None else None
            if isinstance(e, Window):
                if call is not None:
                    self._window(call, e)
            elif isinstance(e, Status):
                if e.state == "start" and call_id is not None:
                    self._calls[call_id] = _Call(self._clock(), str(e.info.get("protocol", "")),
                                                 str(e.info.get("peer", "")))  # fmt: skip
                elif e.state in FINAL_STATES and call is not None:
                    self._final(call_id, call, e)
            elif call is not None:
                self._anger(call_id, call, e)
        self._forget(self._clock() - ENDED_S)

    def _window(self, call: _Call, e: Window) -> None:
        call.t, call.p = e.t_end, e.p
        call.p_max = max(call.p_max, e.p or 0.0)
        call.raised = e.raised
        if call.angry_since is not None and e.p is not None:
            call.segment_max = max(call.segment_max, e.p)
            if e.raised is not None:
                call.segment_raised = max(call.segment_raised or 0.0, e.raised)

    def _anger(self, call_id: str, call: _Call, e: AngerStart | AngerEnd) -> None:
        now = self._clock()
        if isinstance(e, AngerStart):
            call.angry_since, call.segment_max, call.segment_raised = now, e.p, e.raised_max
        else:
            call.last_anger = {
                "at": now,
                "since": call.angry_since,
                "t": round(e.t, 3),
                "duration": round(e.duration, 1),
                "p_max": round(e.p_max, 3),
                "raised_max": _rounded(e.raised_max),
                "ended_by": e.ended_by,
            }
            call.angry_since = None
        self._recent.append({"call": call_id, "at": now, **e.to_dict()})

    def _final(self, call_id: str, call: _Call, status: Status) -> None:
        """A call's final status: kept for ENDED_S if it ended in an error or while angry, else gone."""
        last = call.last_anger
        if status.state == "error":
            kind = status.info.get("error_kind")
            call.end = {"state": "error", "kind": kind, "error": str(status.info.get("error", ""))}
        elif last is not None and (
            last["ended_by"] in ("input_end", "interrupted")
            or (last["ended_by"] is None and abs(last["t"] - status.t) <= AT_END_S)
        ):
            call.end = {"state": status.state, "angry": True}
            if last["ended_by"] is None:  # the events list says so too
                last["ended_by"] = "interrupted" if status.state == "interrupted" else "input_end"
                events = (e for e in reversed(self._recent) if e["call"] == call_id and e["type"] == "anger_end")
                if (ended := next(events, None)) is not None:  # not yet pushed out by later ones
                    ended["ended_by"] = last["ended_by"]
        else:
            del self._calls[call_id]
            return
        call.ended, call.p = self._clock(), None
        self._ended.append(call_id)
        while len(self._ended) > MAX_ENDED:
            self._calls.pop(self._ended.popleft(), None)

    def _forget(self, before: float) -> None:
        while self._ended and (gone := self._calls.get(self._ended[0])) is not None and gone.ended <= before:
            del self._calls[self._ended.popleft()]
        while self._ended and self._ended[0] not in self._calls:  # a call id served again
            self._ended.popleft()

    def snapshot(self) -> dict[str, Any]:
        """This process's calls and recent anger events, as plain data."""
        return {
            "calls": [call.view(call_id) for call_id, call in self._calls.items()],
            "events": list(self._recent),
        }


def state(call: dict[str, Any], now: float) -> str:
    """One of STATES for a call's view at wall time `now`."""
    if call["ended"] is not None:
        return "error" if call["end"]["state"] == "error" else "ended_angry"
    if call["angry_since"] is not None:
        return "angry"
    last = call["last_anger"]
    return "recent" if last is not None and now - last["at"] < RECENT_S else "calm"


def merge(snapshots: list[dict[str, Any]], config: DetectorConfig, now: float) -> dict[str, Any]:
    """What the page draws at wall time `now` from every worker's snapshot: the calls in the order of STATES
    (angry ones the latest to turn angry first, ended ones the latest to end first, recently angry ones the
    latest to calm first, calm ones in the order they started); the anger events of the last EVENTS_S, the
    latest first; the rule that makes a call angry."""
    order = {s: i for i, s in enumerate(STATES)}
    calls = []
    for c in (c for s in snapshots for c in s["calls"]):
        if c["ended"] is None or now - c["ended"] < ENDED_S:
            calls.append({**c, "state": state(c, now)})

    def key(c: dict[str, Any]) -> tuple[int, float]:
        latest = {"angry": c["angry_since"], "recent": c["last_anger"] and c["last_anger"]["at"]}
        return order[c["state"]], -(latest.get(c["state"]) or c["ended"] or -c["started"])

    calls.sort(key=key)
    events = sorted((e for s in snapshots for e in s["events"] if now - e["at"] < EVENTS_S),
                    key=lambda e: e["at"], reverse=True)  # fmt: skip
    return {
        "threshold": config.threshold,
        "release": round(config.threshold - config.hysteresis, 3),
        "patience": config.patience,
        "hold_s": config.hold_s,
        "recent_s": RECENT_S,
        "ended_s": ENDED_S,
        "events_s": EVENTS_S,
        "active": sum(c["ended"] is None for c in calls),
        "angry": sum(c["state"] == "angry" for c in calls),
        "calls": calls,
        "events": events[:MAX_EVENTS],
    }
