"""Window probabilities -> anger_start / anger_end with patience and hysteresis, for many streams at once.

`Trackers` holds the event state of every stream of a `StreamSet` in arrays (one slot per stream) and steps
all streams with a window in one vectorised pass; event objects are built only where something changed.
`EventTracker` is the same logic for a single stream of `Window`s.
"""

from __future__ import annotations

import numpy as np

from .config import DetectorConfig
from .events import AngerEnd, AngerStart, Event, Window


class Trackers:
    """The event state of streams by slot: an open segment, the run of angry windows, where it began."""

    def __init__(self, config: DetectorConfig) -> None:
        self.threshold, self.patience = config.threshold, config.patience
        self.release = config.threshold - config.hysteresis
        self.active = np.zeros(0, dtype=bool)
        self.run = np.zeros(0, dtype=np.int64)  # consecutive windows at or above the threshold
        self.onset = np.zeros(0)  # where the current run of angry windows began
        self.start_t = np.zeros(0)
        self.p_max = np.zeros(0)

    def grow(self, slots: int) -> None:
        """Room for `slots` streams (new slots start without a segment)."""
        extra = slots - len(self.active)
        if extra > 0:
            for name in ("active", "run", "onset", "start_t", "p_max"):
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.zeros(extra, dtype=old.dtype)]))

    def reset(self, slot: int) -> None:
        self.active[slot], self.run[slot] = False, 0

    def step(self, slots: np.ndarray, p: np.ndarray, t_start: np.ndarray, t_end: np.ndarray) -> list[tuple[int, Event]]:
        """One window for each of `slots` (distinct): p (NaN when silent), start and end in seconds. Returns
        (index into the arrays, event) for each stream whose state changed."""
        active = self.active[slots]
        scored = ~np.isnan(p)
        angry = scored & (p >= self.threshold)
        closing = active & ~(scored & (p >= self.release))
        staying = active & ~closing
        self.p_max[slots[staying]] = np.maximum(self.p_max[slots[staying]], p[staying])
        idle = ~active
        run = np.where(angry, self.run[slots] + 1, 0)
        first = idle & (run == 1)
        self.onset[slots[first]] = t_start[first]
        self.run[slots[idle]] = run[idle]
        starting = idle & (run >= self.patience)
        out: list[tuple[int, Event]] = []
        for i in np.flatnonzero(closing | starting).tolist():
            slot, t = int(slots[i]), float(t_end[i])
            if closing[i]:
                out.append((i, self.close(slot, t)))
            else:
                self.active[slot], self.start_t[slot], self.p_max[slot] = True, t, p[i]
                out.append((i, AngerStart(t, float(p[i]), float(self.onset[slot]))))
        return out

    def close(self, slot: int, t: float) -> AngerEnd:
        """End the open segment of a slot at time t."""
        self.active[slot], self.run[slot] = False, 0
        return AngerEnd(t, t - float(self.start_t[slot]), float(self.p_max[slot]))


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
        changed = self._trackers.step(self._slot, p, np.array([window.t_start]), np.array([window.t_end]))
        return [e for _, e in changed]

    def close(self, t: float) -> AngerEnd:
        """End the open segment at time t."""
        return self._trackers.close(0, t)
