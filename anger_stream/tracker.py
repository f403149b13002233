"""Window probabilities -> anger_start / anger_end with patience, hysteresis and a hold, for many streams at once.

A segment starts when `patience` windows in a row reach the threshold. While it is open, every window at or
above the release level (threshold minus hysteresis) keeps it going: its end is the segment's `last_angry`.
Silent windows and windows below the release level end it only once `hold_s` has passed since `last_angry`
without such a window (a pause, a breath or a calmer phrase inside an outburst does not split it, as a voice
activity detector's hangover does not split speech at every breath). The end is decided at the end of the
window that completes the hold: `ended_by` is "calm" if any of the windows since `last_angry` was scored
(speech below the release level), "hold" if all were silent. A stream that ends or is stopped with a segment
open closes it with "input_end" or "interrupted". A segment's `duration` is `last_angry - onset`: the audio
its angry windows span.

`Trackers` holds the event state of every stream of a `StreamSet` in arrays (one slot per stream) and steps
all streams with a window in one vectorised pass; event objects are built only where something changed.
`EventTracker` is the same logic for a single stream of `Window`s.
"""

from __future__ import annotations

import numpy as np

from .config import DetectorConfig
from .events import AngerEnd, AngerStart, Event, Window

ENDED_BY = ("calm", "hold", "input_end", "interrupted")
"""Why an anger segment ended (`AngerEnd.ended_by`)."""
_TIME_EPS = 1e-6
"""Seconds of float rounding allowed when comparing the time since the last angry window with the hold."""


def _maybe(x: float) -> float | None:
    return None if x != x else x  # x != x: NaN


class Trackers:
    """The event state of streams by slot: an open segment, the run of angry windows, where it began, its
    last angry window, and the highest p and p(raised voice) of the run or segment."""

    _FIELDS = ("active", "run", "onset", "last_angry", "p_max", "raised_max", "spoke")

    def __init__(self, config: DetectorConfig) -> None:
        self.threshold, self.patience, self.hold_s = config.threshold, config.patience, config.hold_s
        self.release = config.threshold - config.hysteresis
        self.active = np.zeros(0, dtype=bool)
        self.run = np.zeros(0, dtype=np.int64)  # consecutive windows at or above the threshold
        self.onset = np.zeros(0)  # where the current run of angry windows (or the open segment) began
        self.last_angry = np.zeros(0)  # end of the open segment's last window at or above the release level
        self.p_max = np.zeros(0)  # over the run, then the segment's angry windows
        self.raised_max = np.zeros(0)  # likewise, NaN while none was given
        self.spoke = np.zeros(0, dtype=bool)  # a scored window came since last_angry

    def grow(self, slots: int) -> None:
        """Room for `slots` streams (new slots start without a segment)."""
        extra = slots - len(self.active)
        if extra > 0:
            for name in self._FIELDS:
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.zeros(extra, dtype=old.dtype)]))

    def reset(self, slot: int) -> None:
        self.active[slot], self.run[slot] = False, 0

    def step(
        self, slots: np.ndarray, p: np.ndarray, raised: np.ndarray, t_start: np.ndarray, t_end: np.ndarray
    ) -> list[tuple[int, Event]]:
        """One window for each of `slots` (distinct): p (NaN when silent), p(raised voice) (NaN when silent or
        not given), start and end in seconds. Returns (index into the arrays, event) for each stream whose
        state changed."""
        active = self.active[slots]
        scored = ~np.isnan(p)
        angry = scored & (p >= self.threshold)
        sustained = active & scored & (p >= self.release)
        s = slots[sustained]
        self.last_angry[s], self.spoke[s] = t_end[sustained], False
        self.p_max[s] = np.maximum(self.p_max[s], p[sustained])
        self.raised_max[s] = np.fmax(self.raised_max[s], raised[sustained])
        waiting = active & ~sustained
        self.spoke[slots[waiting & scored]] = True
        closing = waiting & (t_end - self.last_angry[slots] >= self.hold_s - _TIME_EPS)

        idle = ~active
        run = np.where(angry, self.run[slots] + 1, 0)
        self.run[slots[idle]] = run[idle]
        first, later = idle & (run == 1), idle & (run > 1)
        s = slots[first]
        self.onset[s], self.p_max[s], self.raised_max[s] = t_start[first], p[first], raised[first]
        s = slots[later]
        self.p_max[s] = np.maximum(self.p_max[s], p[later])
        self.raised_max[s] = np.fmax(self.raised_max[s], raised[later])
        starting = idle & (run >= self.patience)
        s = slots[starting]
        self.active[s], self.last_angry[s], self.spoke[s] = True, t_end[starting], False

        out: list[tuple[int, Event]] = []
        for i in np.flatnonzero(closing | starting).tolist():
            slot, t = int(slots[i]), float(t_end[i])
            if closing[i]:
                out.append((i, self.close(slot, t, "calm" if self.spoke[slot] else "hold")))
            else:
                raised_max = _maybe(float(self.raised_max[slot]))
                out.append((i, AngerStart(t, float(p[i]), float(self.onset[slot]), raised_max)))
        return out

    def close(self, slot: int, t: float, ended_by: str) -> AngerEnd:
        """End the open segment of a slot, decided at time t, for a reason of ENDED_BY."""
        self.active[slot], self.run[slot] = False, 0
        last = float(self.last_angry[slot])
        raised_max = _maybe(float(self.raised_max[slot]))
        return AngerEnd(t, last - float(self.onset[slot]), float(self.p_max[slot]), ended_by, last, raised_max)


class EventTracker:
    """The event logic of one stream: `update` with each window in turn."""

    def __init__(self, config: DetectorConfig) -> None:
        self._trackers = Trackers(config)
        self._trackers.grow(1)
        self._slot = np.zeros(1, dtype=np.int64)

    @property
    def active(self) -> bool:
        return bool(self._trackers.active[0])

    def update(self, window: Window) -> list[Event]:
        p = np.array([np.nan if window.p is None else window.p])
        raised = np.array([np.nan if window.raised is None else window.raised])
        t_start, t_end = np.array([window.t_start]), np.array([window.t_end])
        return [e for _, e in self._trackers.step(self._slot, p, raised, t_start, t_end)]

    def close(self, t: float, ended_by: str) -> AngerEnd:
        """End the open segment, decided at time t, for a reason of ENDED_BY ("input_end", "interrupted")."""
        return self._trackers.close(0, t, ended_by)
