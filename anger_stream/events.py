"""The events the detector emits and their one JSON form (the schema documented in README.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


@dataclass(frozen=True)
class Window:
    """One scored (or silence-gated) window. `p` is None when the window was silent; `raised`, p(raised voice),
    is None when it was silent or the model gives none."""

    t_start: float
    t_end: float
    p: float | None
    angry: bool
    dbfs: float
    raised: float | None = None

    @property
    def silent(self) -> bool:
        return self.p is None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "type": "window",
            "t_start": round(self.t_start, 3),
            "t_end": round(self.t_end, 3),
            "p": None if self.p is None else round(self.p, 4),
            "angry": self.angry,
            "dbfs": round(self.dbfs, 1),
            "raised": _round(self.raised, 4),
        }
        if self.silent:
            d["silent"] = True
        return d


@dataclass(frozen=True)
class AngerStart:
    """Anger confirmed at stream time t by a window with probability p; `onset` is where the first window
    of the angry run began (equal to t - window for patience 1); `raised_max` the highest p(raised voice) of
    the run's windows (None when the model gives none)."""

    t: float
    p: float
    onset: float
    raised_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "anger_start",
            "t": round(self.t, 3),
            "p": round(self.p, 4),
            "onset": round(self.onset, 3),
            "raised_max": _round(self.raised_max, 4),
        }


@dataclass(frozen=True)
class AngerEnd:
    """An anger segment ended: `t` is the stream time at which the end was decided (the end of the window that
    completed the hold, or where the input ended or was stopped), `last_angry` the end of its last angry
    window, `duration` the audio its angry windows span (last_angry minus the start's onset), `p_max` and
    `raised_max` the highest p and p(raised voice) of its angry windows, `ended_by` why it ended:
    "calm" (the hold passed with speech below the release level), "hold" (the hold passed in silence),
    "input_end" (the input ended: a hang-up, the end of a file) or "interrupted" (the program was stopped)."""

    t: float
    duration: float
    p_max: float
    ended_by: str | None = None  # None only in events made by hand
    last_angry: float | None = None
    raised_max: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "anger_end",
            "t": round(self.t, 3),
            "duration": round(self.duration, 3),
            "p_max": round(self.p_max, 4),
            "ended_by": self.ended_by,
            "last_angry": _round(self.last_angry, 3),
            "raised_max": _round(self.raised_max, 4),
        }


@dataclass(frozen=True)
class Status:
    """Something about the stream rather than the speaker: start, overflow, device change, end."""

    state: str
    t: float
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "status", "state": self.state, "t": round(self.t, 3), **self.info}


Event = Window | AngerStart | AngerEnd | Status


@dataclass
class Counts:
    """What a stream's final status line counts: windows (angry, silent) and anger segments."""

    windows: int = 0
    angry_windows: int = 0
    silent_windows: int = 0
    anger_segments: int = 0

    def add(self, events: Iterable[Event]) -> None:
        for e in events:
            if isinstance(e, Window):
                self.windows += 1
                self.angry_windows += e.angry
                self.silent_windows += e.silent
            self.anger_segments += isinstance(e, AngerStart)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def to_json(event: Event, **extra: Any) -> str:
    """One JSON line (without newline); `extra` fields (e.g. a call id) come first."""
    return json.dumps({**extra, **event.to_dict()}, separators=(",", ":"), allow_nan=False)
