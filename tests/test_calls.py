"""The call core without I/O: bytes in, the single-stream detector's events out, counts, flow control."""

from __future__ import annotations

import numpy as np
import pytest

from anger_stream import AngerDetector, Calls, StreamSet, Window, codec
from anger_stream.calls import DTMF_BURST, MAX_TAKE_S, DuplicateCall
from anger_stream.events import Status
from tools.channels import mulaw_encode


@pytest.fixture(scope="module")
def detector() -> AngerDetector:
    return AngerDetector(sample_rate=8000)


def _signal(seed: int, seconds: float, rate: int = 8000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * rng.uniform(0.01, 0.3)).clip(-1, 1).astype(np.float32)


def test_calls_equal_one_detector_per_call(detector: AngerDetector) -> None:
    x = _signal(0, 4.3)
    payloads = {
        "pcm": ((x * 32767).astype("<i2").tobytes(), "s16le", 2),
        "float": (x.astype("<f4").tobytes(), "f32le", 4),
        "ulaw": (mulaw_encode(x), "mulaw", 1),
        "fast": ((x[: 8000 * 3] * 32767).astype("<i2").tobytes(), "s16le", 2),  # all at once
    }
    streams, calls = StreamSet(detector.model, detector.config, max_windows=2), Calls()
    got: dict[str, list] = {k: [] for k in payloads}
    for k, (_, encoding, _) in payloads.items():
        assert calls.open(k, 8000, encoding, {"x": 1}, now=0.0) == [
            (k, Status("start", 0.0, {"sample_rate": 8000, "x": 1}))
        ]
    with pytest.raises(DuplicateCall):
        calls.open("pcm", 8000, "s16le", {}, now=0.0)
    for rate, encoding in ((47999, "s16le"), (8000, "s24le")):  # refused before any audio reaches the scorer
        with pytest.raises(ValueError, match=str(rate) if rate != 8000 else "unknown encoding"):
            calls.open("bad", rate, encoding, {}, now=0.0)
    calls.receive("fast", payloads["fast"][0])
    for i in range(0, 8000 * 5, 160):
        for k, (data, _, width) in payloads.items():
            if k != "fast" and i * width < len(data):
                calls.receive(k, data[i * width : (i + 160) * width])
        if calls.due:
            for call_id, e in calls.tick(streams):
                got[call_id].append(e)
    for k in payloads:
        calls.end(k, "end", {"why": k})
    while calls.due:
        for call_id, e in calls.tick(streams):
            got[call_id].append(e)
    assert len(calls) == 0 and len(streams) == 0
    for k, (data, encoding, _) in payloads.items():
        want = detector.feed(codec.decode(data, encoding)) + detector.flush()
        events, final = got[k][:-1], got[k][-1]
        assert [e.to_dict() for e in events] == [e.to_dict() for e in want], k
        windows = [e for e in events if isinstance(e, Window)]
        assert final.state == "end" and final.info["why"] == k and final.info["windows"] == len(windows)
        assert final.t == pytest.approx(len(data) / payloads[k][2] / 8000)


def test_a_call_far_ahead_must_wait_and_is_scored_two_windows_per_tick(detector: AngerDetector) -> None:
    streams, calls = StreamSet(detector.model, detector.config, max_windows=2), Calls(max_ahead_s=5.0)
    calls.open("fast", 8000, "s16le", {}, now=100.0)
    calls.receive("fast", bytes(2 * 8000 * 8))  # 8 s at once
    assert calls.wait("fast", now=100.0) is None  # until some of it is scored
    windows = []
    while calls.due:
        windows.append(sum(isinstance(e, Window) for _, e in calls.tick(streams)))
    assert max(windows) == 2 and sum(windows) == 12
    assert calls.wait("fast", now=100.0) == 0.0
    calls.receive("fast", bytes(2 * 4000 * 5))  # 10.5 s of audio after 0 s: past the 10 s burst, at 2x
    assert calls.wait("fast", now=100.0) == pytest.approx(0.25)
    assert calls.wait("fast", now=100.25) == 0.0


def test_a_large_read_waits_in_the_call_and_never_widens_the_rows(detector: AngerDetector) -> None:
    """Audio beyond what a call's next windows need stays in the call: rows sized for that are never widened,
    and the events are the single-stream detector's."""
    c = detector.config
    streams = StreamSet(detector.model, c, max_windows=2, held_s=c.window_s + MAX_TAKE_S)
    calls = Calls(max_ahead_s=30.0)
    widths = (streams._ring.buf.shape[1], round((c.window_s + MAX_TAKE_S + c.hop_s) * 8000))
    x = (_signal(6, 9.0) * 32767).astype("<i2")
    calls.open("big", 8000, "s16le", {}, now=0.0)
    calls.receive("big", x[:64_000].tobytes())  # 8 s in one read
    got, handed, rest = [], 0, x[64_000:].tobytes()
    while calls.due:
        feeds = calls.take()
        handed += len(feeds[0].data) // 2
        assert handed <= calls._calls["big"].due_at + MAX_TAKE_S * 8000
        got += calls.settle(streams.run(feeds))
        if handed == 64_000 and rest:
            calls.receive("big", rest)
            calls.end("big", "end")
            rest = b""
        assert (streams._ring.buf.shape[1], streams._lanes[8000].rows.buf.shape[1]) == widths
    assert got[-1][1].state == "end" and len(streams) == 0
    want = detector.feed(codec.decode(x.tobytes(), "s16le")) + detector.flush()
    assert [e.to_dict() for _, e in got[:-1]] == [e.to_dict() for e in want]


def test_rows_widen_for_more_than_they_were_sized_for(detector: AngerDetector) -> None:
    """Without a bound (or past it) rows double, and a stream's events do not depend on it."""
    c = detector.config
    streams = StreamSet(detector.model, c, held_s=c.window_s)
    before = streams._ring.buf.shape[1]
    streams.add("a", 8000)
    x = _signal(7, 6.0)
    streams.push("a", x)
    streams.end("a")
    got = streams.tick()["a"]
    assert streams._ring.buf.shape[1] >= 2 * before
    assert [e.to_dict() for e in got] == [e.to_dict() for e in detector.feed(x) + detector.flush()]


def test_dtmf_lines_are_capped_per_call() -> None:
    calls = Calls()
    calls.open("c", 8000, "mulaw", {}, now=0.0)
    lines = [e for _ in range(1000) for e in calls.dtmf("c", "5")]
    assert len(lines) == DTMF_BURST and lines[0] == ("c", Status("dtmf", 0.0, {"digit": "5"}))
    calls.receive("c", bytes(8000))  # a second of audio allows ten more
    assert len([e for _ in range(100) for e in calls.dtmf("c", "5")]) == 10
    calls.end("c", "end")
    streams = StreamSet(AngerDetector().model)
    *_, (_, final) = calls.tick(streams)
    assert final.state == "end" and final.info["dtmf_dropped"] == 1000 + 100 - DTMF_BURST - 10


def test_a_real_time_call_is_ticked_once_per_window(detector: AngerDetector) -> None:
    """A window is due when the resampler can complete it, not one frame early (which spun empty ticks)."""
    streams, calls = StreamSet(detector.model, detector.config, max_windows=2, workers=1), Calls()
    calls.open("a", 8000, "s16le", {}, now=0.0)
    x = (_signal(5, 10.0) * 32767).astype("<i2")
    ticks, windows = 0, 0
    for i in range(0, len(x), 160):
        calls.receive("a", x[i : i + 160].tobytes())
        while calls.due:
            windows += sum(isinstance(e, Window) for _, e in calls.tick(streams))
            ticks += 1
    assert windows == 15 and ticks == windows + 1  # the first tick opens the stream
