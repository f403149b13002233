"""The event logic: a segment survives pauses and calmer phrases for the hold, and says why it ended."""

from __future__ import annotations

import pytest

from anger_stream.config import DetectorConfig
from anger_stream.events import AngerEnd, AngerStart, Window
from anger_stream.tracker import EventTracker

ANGRY, CALM, SILENT = 0.9, 0.2, None


def run(ps: list[float | None], raised: list[float | None] | None = None, **settings: float) -> list:
    """(index of the window, event) for windows of p `ps` every 0.6 s (1.2 s long) through one tracker."""
    tracker = EventTracker(DetectorConfig(**{"threshold": 0.6, "hysteresis": 0.1, **settings}))
    raised = raised or [None] * len(ps)
    out = []
    for i, (p, r) in enumerate(zip(ps, raised, strict=True)):
        w = Window(0.6 * i, 0.6 * i + 1.2, p, p is not None and p >= 0.6, -20.0, r)
        out += [(i, e) for e in tracker.update(w)]
    return out


def test_pauses_and_calmer_phrases_shorter_than_the_hold_do_not_split_a_segment() -> None:
    ps = [CALM, ANGRY, SILENT, SILENT, ANGRY, CALM, CALM, ANGRY, SILENT, ANGRY, ANGRY]
    assert [type(e) for _, e in run(ps, hold_s=1.5)] == [AngerStart]
    assert [type(e) for _, e in run(ps, hold_s=0.0)] == [AngerStart, AngerEnd] * 3 + [AngerStart]  # split


def test_the_hold_expires_with_the_first_window_that_completes_it() -> None:
    # last angry window ends at 0.6 * 1 + 1.2 = 1.8; the hold of 1.5 s has passed at the window ending at 3.6
    events = run([CALM, ANGRY, SILENT, SILENT, SILENT, SILENT, ANGRY], hold_s=1.5)
    (_, start), (i, end), (j, again) = events
    assert j == 6 and isinstance(again, AngerStart)  # a new segment after the end
    assert isinstance(start, AngerStart) and start.onset == pytest.approx(0.6)
    assert i == 4 and end == AngerEnd(
        t=pytest.approx(3.6), duration=pytest.approx(1.2), p_max=ANGRY, ended_by="hold", last_angry=pytest.approx(1.8)
    )
    # exactly the hold (three hops) ends it at the third window, a hair less at the fourth
    assert run([ANGRY, SILENT, SILENT, SILENT, SILENT], hold_s=1.8)[1][0] == 3
    assert run([ANGRY, SILENT, SILENT, SILENT, SILENT], hold_s=1.79)[1][0] == 3
    assert run([ANGRY, SILENT, SILENT, SILENT, SILENT], hold_s=1.81)[1][0] == 4


def test_ended_by_calm_when_speech_below_the_release_level_came_within_the_hold() -> None:
    assert run([ANGRY, SILENT, CALM, SILENT], hold_s=1.2)[1][1].ended_by == "calm"
    assert run([ANGRY, SILENT, SILENT, SILENT], hold_s=1.2)[1][1].ended_by == "hold"
    # windows in the hysteresis band keep the segment and move last_angry on
    (_, _), (i, end) = run([ANGRY, 0.55, 0.55, CALM, CALM, CALM], hold_s=1.2)
    assert i == 4 and end.last_angry == pytest.approx(2.4) and end.duration == pytest.approx(2.4)


def test_an_open_segment_is_closed_for_the_reason_given() -> None:
    tracker = EventTracker(DetectorConfig(threshold=0.6, hold_s=2.0))
    assert isinstance(tracker.update(Window(0.0, 1.2, 0.9, True, -20.0))[0], AngerStart)
    end = tracker.close(3.3, "input_end")
    assert (end.t, end.duration, end.last_angry, end.ended_by) == (3.3, 1.2, 1.2, "input_end")
    assert not tracker.active


def test_raised_max_over_the_run_and_the_segment_null_without() -> None:
    ps = [ANGRY, ANGRY, CALM, ANGRY, SILENT, SILENT, SILENT]
    (_, start), (_, end) = run(ps, [0.3, 0.5, 0.99, 0.4, None, None, None], patience=2, hold_s=1.0)
    assert start.raised_max == 0.5  # the run's windows
    assert end.raised_max == 0.5  # the segment's angry windows only: not the calm one's 0.99
    (_, start), (_, end) = run(ps, patience=2, hold_s=1.0)
    assert start.raised_max is None and end.raised_max is None
    assert start.to_dict()["raised_max"] is None and end.to_dict()["ended_by"] == "hold"


def test_hold_is_checked() -> None:
    for bad in (-0.1, 61.0, float("nan")):
        with pytest.raises(ValueError, match="hold_s"):
            DetectorConfig(hold_s=bad)
