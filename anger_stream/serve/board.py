"""What the supervisor's page shows (`serve --dashboard`), sans-I/O: the hub's events in, JSON-able views out.

`Board` follows one server process's calls from their events (a hub sink, on the event loop): each live
call's last p, whether it is angry, and the last anger events. `Board.snapshot` is a plain dict; `merge`
joins the snapshots of every worker into what the page draws: the calls, angry ones first, and the last
anger events of all.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..calls import CallEvent
from ..events import AngerEnd, AngerStart, Status, Window
from .hub import FINAL_STATES

RECENT_EVENTS = 20
"""Anger events the page lists."""


@dataclass
class _Live:
    """One call as the page shows it."""

    started: float  # wall time of its start line
    protocol: str
    peer: str
    t: float = 0.0  # stream seconds scored
    p: float | None = None  # the last window's (None: silent, or none yet)
    p_max: float = 0.0
    angry_since: float | None = None  # wall time of its open anger segment's start

    def view(self, call_id: str) -> dict[str, Any]:
        return {
            "call": call_id,
            "protocol": self.protocol,
            "peer": self.peer,
            "t": round(self.t, 1),
            "p": None if self.p is None else round(self.p, 3),
            "p_max": round(self.p_max, 3),
            "angry": self.angry_since is not None,
            "angry_since": self.angry_since,
            "started": self.started,
        }


class Board:
    """The live calls of one server process and its last anger events, from the hub's events."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock  # wall time: anger events are shown with the time of day
        self._calls: dict[str, _Live] = {}
        self._recent: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)

    def events(self, events: list[CallEvent]) -> None:
        """A hub sink."""
        for call_id, e in events:
            live = self._calls.get(call_id) if call_id is not None else None
            if isinstance(e, Window):
                if live is not None:
                    live.t, live.p = e.t_end, e.p
                    live.p_max = max(live.p_max, e.p or 0.0)
            elif isinstance(e, Status):
                if e.state == "start" and call_id is not None:
                    protocol, peer = str(e.info.get("protocol", "")), str(e.info.get("peer", ""))
                    self._calls[call_id] = _Live(self._clock(), protocol, peer)
                elif e.state in FINAL_STATES:
                    self._calls.pop(call_id, None)
            elif live is not None:
                self._anger(call_id, live, e)

    def _anger(self, call_id: str, live: _Live, e: AngerStart | AngerEnd) -> None:
        now = self._clock()
        live.angry_since = now if isinstance(e, AngerStart) else None
        self._recent.append({"call": call_id, "at": now, **e.to_dict()})

    def snapshot(self) -> dict[str, Any]:
        """This process's calls and last anger events, as plain data."""
        return {
            "calls": [live.view(call_id) for call_id, live in self._calls.items()],
            "events": list(self._recent),
        }


def merge(snapshots: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """What the page draws from every worker's snapshot: angry calls first (the latest to turn angry at the
    top), then the others in the order they started; the last anger events of all, the latest first; the
    threshold the meters mark."""
    calls = [c for s in snapshots for c in s["calls"]]
    calls.sort(key=lambda c: (not c["angry"], -(c["angry_since"] or 0.0), c["started"]))
    events = sorted((e for s in snapshots for e in s["events"]), key=lambda e: e["at"], reverse=True)
    return {
        "threshold": threshold,
        "active": len(calls),
        "angry": sum(c["angry"] for c in calls),
        "calls": calls,
        "events": events[:RECENT_EVENTS],
    }
