"""The sans-I/O core: chunking invariance, silence gate, events, and many streams equal to one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import read_mono
from scipy.signal import resample_poly

from anger_stream import AngerDetector, AngerEnd, AngerStart, DetectorConfig, StreamSet, Window
from anger_stream.detector import EventTracker, Windower, window_bounds
from anger_stream.detector import windows as offline_windows


@pytest.fixture(scope="module")
def detector() -> AngerDetector:
    return AngerDetector(threshold=0.5)


def windows(events: list) -> list[Window]:
    return [e for e in events if isinstance(e, Window)]


def probs(events: list) -> np.ndarray:
    return np.array([np.nan if w.p is None else w.p for w in windows(events)])


def feed_in_chunks(detector: AngerDetector, x: np.ndarray, chunk: int, rate: int = 16000) -> list:
    events = []
    for i in range(0, len(x), chunk):
        events += detector.feed(x[i : i + chunk], rate)
    return events + detector.flush()


@pytest.mark.parametrize("chunk", [1, 160, 320, 4096, 10**9])
def test_any_chunk_size_gives_the_offline_scores(detector: AngerDetector, speech_wav: Path, chunk: int) -> None:
    x, rate = read_mono(speech_wav)
    x = np.concatenate([np.zeros(20000, np.float32), x, np.zeros(12000, np.float32)])  # silence around speech
    reference = detector.score(x, rate)
    events = feed_in_chunks(detector, x, chunk)
    np.testing.assert_allclose(probs(events), reference, rtol=1e-6, atol=1e-7)  # batching may move the last ulp
    starts = [w.t_start for w in windows(events)]
    assert starts == pytest.approx(np.arange(len(reference)) * 0.6)
    assert np.isnan(reference[0]) and np.isfinite(reference).sum() >= 4


def test_analyse_gives_the_live_events(speech_wav: Path) -> None:
    x, rate = read_mono(speech_wav)
    detector = AngerDetector(threshold=0.05, patience=2)
    live = feed_in_chunks(detector, x, 4096, rate)
    assert [e.to_dict() for e in detector.analyse(x, rate)] == [e.to_dict() for e in live]
    assert any(isinstance(e, AngerStart) for e in live)


def test_8khz_stream_matches_offline_scores(detector: AngerDetector, speech_wav: Path) -> None:
    x, _ = read_mono(speech_wav)
    x8 = resample_poly(x, 1, 2).astype(np.float32)
    reference = detector.score(x8, 8000)
    np.testing.assert_allclose(probs(feed_in_chunks(detector, x8, 160, 8000)), reference, atol=1e-5)


def test_integer_pcm_is_accepted(detector: AngerDetector, speech_wav: Path) -> None:
    x, _ = read_mono(speech_wav)
    pcm = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(detector.score(pcm), detector.score(pcm / 32768.0), atol=1e-6)


def test_silence_is_gated_not_scored(detector: AngerDetector) -> None:
    quiet = np.random.default_rng(0).standard_normal(48000).astype(np.float32) * 10 ** (-70 / 20)
    events = detector.feed(quiet) + detector.flush()
    assert windows(events) and all(w.silent and w.p is None and not w.angry for w in windows(events))
    assert all(w.dbfs < -60 for w in windows(events))
    assert np.isnan(detector.score(np.zeros(32000))).all()


def test_short_and_degenerate_inputs(detector: AngerDetector) -> None:
    assert detector.score(np.zeros(1)).shape == (0,)
    assert detector.feed(np.zeros(1)) == [] and detector.flush() == []
    clipped = np.sign(np.sin(np.arange(32000) / 5.0)).astype(np.float32)  # full-scale square wave
    dc = np.full(32000, 0.5, np.float32) + 0.01 * np.sin(np.arange(32000) / 3.0).astype(np.float32)
    for x in (clipped, dc):
        p = detector.score(x)
        assert p.shape == (2,) and np.all((p >= 0) & (p <= 1))
    # a DC offset changes nothing: the level and the scores are those of the signal without it
    np.testing.assert_allclose(detector.score(dc), detector.score(dc - 0.5), atol=1e-4)


def test_nan_samples_count_as_silence_in_the_api(detector: AngerDetector) -> None:
    x = np.full(32000, np.nan, np.float32)
    assert all(w.silent for w in windows(detector.feed(x) + detector.flush()))


def test_windower_cuts_every_hop_and_pads_the_tail() -> None:
    w = Windower(window=10, hop=5, min_audio=8)
    segs = w.push(np.arange(23, dtype=np.float32)) + w.finish()
    assert [s.start for s in segs] == [0, 5, 10, 15]
    np.testing.assert_array_equal(segs[2].audio, np.arange(10, 20))
    np.testing.assert_array_equal(segs[3].audio, np.arange(15, 23))  # 8 samples: padded later


def window(t: float, p: float | None, threshold: float = 0.6) -> Window:
    return Window(t - 1.2, t, p, p is not None and p >= threshold, -20.0)


def test_events_with_patience_and_hysteresis() -> None:
    tracker = EventTracker(DetectorConfig(threshold=0.6, patience=2, hysteresis=0.1))
    out = [tracker.update(window(1.2 + 0.6 * i, p)) for i, p in enumerate([0.7, 0.3, 0.7, 0.8, 0.55, 0.95, 0.4])]
    assert out[0] == [] and out[2] == []  # one angry window is not enough with patience 2
    assert out[3] == [AngerStart(t=pytest.approx(3.0), p=0.8, onset=pytest.approx(1.2))]
    assert out[4] == [] and out[5] == []  # 0.55 is inside the hysteresis band
    assert out[6] == [AngerEnd(t=pytest.approx(4.8), duration=pytest.approx(1.8), p_max=0.95)]


def test_silence_and_end_of_stream_close_a_segment() -> None:
    tracker = EventTracker(DetectorConfig(threshold=0.6))
    assert isinstance(tracker.update(window(1.2, 0.9))[0], AngerStart)
    assert isinstance(tracker.update(window(1.8, None))[0], AngerEnd)


def test_flush_closes_open_anger(detector: AngerDetector) -> None:
    always = AngerDetector(detector.model, threshold=0.0)
    x = np.random.default_rng(3).standard_normal(40000).astype(np.float32) * 0.1
    events = always.feed(x) + always.flush()
    kinds = [type(e).__name__ for e in events if not isinstance(e, Window)]
    assert kinds == ["AngerStart", "AngerEnd"]
    assert events[-1].t == pytest.approx(2.5)


def test_stream_set_equals_single_detectors(detector: AngerDetector, speech_wav: Path) -> None:
    x, _ = read_mono(speech_wav)
    rng = np.random.default_rng(4)
    inputs = {
        "a": (x, 16000),
        "b": (np.concatenate([x[::-1], np.zeros(5000, np.float32)]), 16000),
        "c": (resample_poly(x, 1, 2).astype(np.float32), 8000),
        "bad": (np.full(30000, np.nan, np.float32), 16000),
    }
    streams = StreamSet(detector.model, detector.config, max_batch=3)
    got: dict[str, list] = {k: [] for k in inputs}
    for k, (_, rate) in inputs.items():
        streams.add(k, rate)
    pos = dict.fromkeys(inputs, 0)
    while pos:
        for k in list(pos):
            sig, rate = inputs[k]
            n = int(rng.integers(1, 3000))
            streams.push(k, sig[pos[k] : pos[k] + n])
            pos[k] += n
            if pos[k] >= len(sig):
                streams.end(k)
                del pos[k]
        for k, events in streams.tick().items():
            got[k] += events
    assert len(streams) == 0
    for k, (sig, rate) in inputs.items():
        expected = feed_in_chunks(detector, sig, 320, rate)
        assert [e.to_dict() for e in got[k]] == [e.to_dict() for e in expected]
    with pytest.raises(KeyError):
        streams.push("a", x)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (15999, []),
        (16000, [(0, 16000)]),
        (19200, [(0, 19200)]),
        (25600, [(0, 19200), (9600, 25600)]),
        (32000, [(0, 19200), (9600, 28800)]),
    ],
)
def test_window_bounds_hold_at_least_one_second(n: int, expected: list) -> None:
    assert window_bounds(n) == expected


@pytest.mark.parametrize("chunk", [1, 333, 9600, 100_000])
def test_offline_window_bounds_are_what_the_stream_cuts(chunk: int) -> None:
    x = np.arange(50_000, dtype=np.float32)
    w = Windower(19200, 9600, 16000)
    segments = [s for i in range(0, len(x), chunk) for s in w.push(x[i : i + chunk])] + w.finish()
    assert [(s.start, s.start + len(s.audio)) for s in segments] == window_bounds(len(x))
    assert all(np.array_equal(s.audio, x[s.start : s.start + len(s.audio)]) for s in segments)
    offline = offline_windows(x)
    assert [s.start for s in offline] == [s.start for s in segments]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(offline, segments, strict=True))
