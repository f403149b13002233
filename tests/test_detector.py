"""The sans-I/O core: chunking invariance, silence gate, events, and many streams equal to one."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import read_mono
from scipy.signal import resample_poly

from anger_stream import AngerDetector, AngerEnd, AngerStart, DetectorConfig, StreamSet, Window, audio
from anger_stream.detector import EventTracker, window_bounds
from anger_stream.detector import windows as offline_windows
from anger_stream.model import AngerModel
from anger_stream.tracker import Trackers


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
    # batches of other sizes move YAMNet's log-mel front end (then p) in the fifth digit
    np.testing.assert_allclose(probs(feed_in_chunks(detector, x8, 160, 8000)), reference, atol=2e-4)


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


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=str)
def test_nan_and_infinite_samples_are_refused_as_the_command_line_does(detector: AngerDetector, bad: float) -> None:
    x = np.full(32000, 0.1, np.float32)
    x[1000] = bad
    for method in (detector.feed, detector.score, detector.analyse):
        with pytest.raises(ValueError, match="^audio contains NaN or infinite samples$"):
            method(x)
    assert detector.t == 0.0  # nothing was fed


def test_a_misspelt_setting_names_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"unknown setting treshold \(did you mean threshold\?\); valid: threshold, "):
        AngerDetector(treshold=0.5)


def window(t: float, p: float | None, threshold: float = 0.6) -> Window:
    return Window(t - 1.2, t, p, p is not None and p >= threshold, -20.0)


def test_events_with_patience_and_hysteresis() -> None:
    tracker = EventTracker(DetectorConfig(threshold=0.6, patience=2, hysteresis=0.1, hold_s=0.0))
    out = [tracker.update(window(1.2 + 0.6 * i, p)) for i, p in enumerate([0.7, 0.3, 0.7, 0.8, 0.55, 0.95, 0.4])]
    assert out[0] == [] and out[2] == []  # one angry window is not enough with patience 2
    assert out[3] == [AngerStart(t=pytest.approx(3.0), p=0.8, onset=pytest.approx(1.2))]
    assert out[4] == [] and out[5] == []  # 0.55 is inside the hysteresis band
    end = AngerEnd(t=pytest.approx(4.8), duration=pytest.approx(3.0), p_max=0.95, ended_by="calm", last_angry=4.2)
    assert out[6] == [end]


def test_silence_and_end_of_stream_close_a_segment() -> None:
    tracker = EventTracker(DetectorConfig(threshold=0.6, hold_s=0.0))
    assert isinstance(tracker.update(window(1.2, 0.9))[0], AngerStart)
    assert tracker.update(window(1.8, None))[0].ended_by == "hold"


def test_flush_closes_open_anger(detector: AngerDetector) -> None:
    always = AngerDetector(detector.model, threshold=0.0)
    x = np.random.default_rng(3).standard_normal(40000).astype(np.float32) * 0.1
    events = always.feed(x) + always.flush()
    kinds = [type(e).__name__ for e in events if not isinstance(e, Window)]
    assert kinds == ["AngerStart", "AngerEnd"]
    assert events[-1].t == pytest.approx(2.5) and events[-1].ended_by == "input_end"


def _offline(model: AngerModel, config: DetectorConfig, x: np.ndarray, rate: int) -> list:
    """An independent reference: resample_poly of the whole signal, window_bounds, audio.dbfs and the model on
    audio.prepare_window of each window, EventTracker on the windows, anger_end at the end."""
    x16 = np.nan_to_num(audio.resample(x, rate), nan=0.0)
    tracker, events = EventTracker(config), []
    for s, e in window_bounds(len(x16), config):
        level = audio.dbfs(x16[s:e])
        p = (
            float(model.predict(audio.prepare_window(x16[s:e], config.window)[None])[0])
            if level >= config.min_dbfs
            else None
        )
        w = Window(s / 16000, e / 16000, p, p is not None and p >= config.threshold, level)
        events += [w, *tracker.update(w)]
    return events + ([tracker.close(len(x16) / 16000, "input_end")] if tracker.active else [])


def test_many_streams_at_many_rates_joining_and_leaving_equal_one_detector_each(speech_wav: Path) -> None:
    """Streams at 8, 16, 44.1 and 48 kHz, silent and NaN ones, joining and ending between and within ticks, in
    random chunks and at most 2 windows a tick each: every stream's events are those of its own detector fed
    in 320-sample chunks, and its windows those of the offline reference (to float32 rounding)."""
    x, _ = read_mono(speech_wav)
    x = np.concatenate([x, x[::-1] * 0.5, x])
    config = DetectorConfig(threshold=0.2, patience=2, hysteresis=0.05)
    detector = AngerDetector(config=config)
    quiet = np.random.default_rng(1).standard_normal(40000).astype(np.float32) * 1e-4
    inputs = {
        "a": (x, 16000),
        "b": (np.concatenate([x[::-1], np.zeros(5000, np.float32)]), 16000),
        "c": (resample_poly(x, 1, 2).astype(np.float32), 8000),
        "d": (resample_poly(x, 441, 160).astype(np.float32), 44100),
        "e": (resample_poly(x, 3, 1).astype(np.float32), 48000),
        "quiet": (quiet, 16000),
        "bad": (np.full(30000, np.nan, np.float32), 16000),
        "late": (x[: 16000 * 3], 8000),
    }
    joins = {k: i for i, k in enumerate(inputs)}  # stream k joins at tick joins[k]
    streams = StreamSet(detector.model, config, max_batch=3, workers=2, max_windows=2)
    rng = np.random.default_rng(4)
    got: dict[str, list] = {k: [] for k in inputs}
    pos: dict[str, int] = {}
    tick = 0
    while pos or tick <= max(joins.values()):
        for k in [k for k, j in joins.items() if j == tick]:
            streams.add(k, inputs[k][1])
            pos[k] = 0
        for k in list(pos):
            sig, rate = inputs[k]
            n = int(rng.integers(1, rate // 4))
            streams.push(k, sig[pos[k] : pos[k] + n])
            pos[k] += n
            if pos[k] >= len(sig):
                streams.end(k)
                del pos[k]
        for k, events in streams.tick().items():
            got[k] += events
        tick += 1
    while len(streams):
        for k, events in streams.tick().items():
            got[k] += events
    for k, (sig, rate) in inputs.items():
        silent = np.nan_to_num(sig, nan=0.0)  # a stream scores NaN as silence; the API refuses it
        assert [e.to_dict() for e in got[k]] == [e.to_dict() for e in feed_in_chunks(detector, silent, 320, rate)], k
        want = _offline(detector.model, config, sig, rate)
        assert [type(e) for e in got[k]] == [type(e) for e in want], k
        np.testing.assert_allclose(probs(got[k]), probs(want), rtol=0, atol=2e-4)  # other batch sizes
    kinds = {type(e).__name__ for evs in got.values() for e in evs}
    assert {"AngerStart", "AngerEnd"} <= kinds
    assert all(w.silent for w in windows(got["quiet"]) + windows(got["bad"])) and windows(got["quiet"])
    with pytest.raises(KeyError):
        streams.push("a", x)


def test_the_vectorised_event_logic_equals_one_tracker_per_stream() -> None:
    """Trackers stepping many streams at once (any subset each step) equals EventTracker per stream."""
    config = DetectorConfig(threshold=0.6, patience=3, hysteresis=0.2, hold_s=1.5)
    rng = np.random.default_rng(0)
    n, steps = 40, 300
    many, singles = Trackers(config), [EventTracker(config) for _ in range(n)]
    many.grow(n)
    t = np.zeros(n)
    ended_by: set[str] = set()
    for _ in range(steps):
        slots = np.flatnonzero(rng.random(n) < 0.5)
        p = np.where(rng.random(len(slots)) < 0.2, np.nan, rng.beta(2, 2, len(slots)))
        raised = np.where(np.isnan(p) | (rng.random(len(slots)) < 0.3), np.nan, rng.random(len(slots)))
        t_start, t_end = t[slots], t[slots] + 1.2
        t[slots] += 0.6
        got = dict(many.step(slots, p, raised, t_start, t_end))
        ended_by |= {e.ended_by for e in got.values() if isinstance(e, AngerEnd)}
        for i, s in enumerate(slots.tolist()):
            pi = None if np.isnan(p[i]) else float(p[i])
            ri = None if np.isnan(raised[i]) else float(raised[i])
            w = Window(float(t_start[i]), float(t_end[i]), pi, pi is not None and pi >= 0.6, 0.0, ri)
            want = singles[s].update(w)
            assert ([got[i]] if i in got else []) == want
    assert sum(tr.active for tr in singles) == many.active.sum() > 0
    assert {"calm", "hold"} <= ended_by


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


def _varied(seed: int) -> np.ndarray:
    """2 s each of loud noise, quiet noise (gated), noise on a DC offset, digital zero, loud noise; 0.625 s more."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(5 * 32000 + 10000)
    levels = np.repeat([0.1, 1e-4, 0.05, 0.0, 0.2, 0.1], 32000)[: len(noise)]
    offset = np.repeat([0.0, 0.0, 0.3, 0.0, 0.0, 0.0], 32000)[: len(noise)]
    return (noise * levels + offset).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 333, 9600, 100_000])
def test_the_stream_cuts_measures_and_prepares_the_offline_windows(detector: AngerDetector, chunk: int) -> None:
    """Each window is where window_bounds puts it, its level is audio.dbfs of those samples and its p the model's
    on audio.prepare_window of them (short last windows included), however the audio arrives and ticks fall."""
    x = _varied(7)
    streams = StreamSet(detector.model, detector.config, max_batch=3)
    streams.add("s")
    events: list = []
    for n, i in enumerate(range(0, len(x), chunk)):
        streams.push("s", x[i : i + chunk])
        if n % 997 == 0:
            events += streams.tick().get("s", [])
    streams.end("s")
    events += streams.tick()["s"]
    bounds = window_bounds(len(x))
    got = windows(events)
    assert [(round(w.t_start * 16000), round(w.t_end * 16000)) for w in got] == bounds
    segments = [w.audio for w in offline_windows(x)]
    np.testing.assert_allclose([w.dbfs for w in got], [audio.dbfs(s) for s in segments], rtol=0, atol=1e-9)
    loud = [i for i, s in enumerate(segments) if audio.dbfs(s) >= detector.config.min_dbfs]
    assert 0 < len(loud) < len(segments) and len(segments[-1]) < 19200
    assert all(got[i].p is None for i in set(range(len(got))) - set(loud))
    want = detector.model.predict(np.stack([audio.prepare_window(segments[i], 19200) for i in loud]))
    np.testing.assert_allclose([got[i].p for i in loud], want, rtol=0, atol=1e-6)


def test_infinite_samples_in_a_stream_are_silence_without_numpy_warnings(detector: AngerDetector) -> None:
    """A call's stream (StreamSet) scores windows with non-finite samples as silence, quietly."""
    streams = StreamSet(detector.model)
    streams.add("call", 16000)
    x = np.full(40000, 0.1, np.float32)
    x[[5000, 30000]] = [np.inf, -np.inf]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        streams.push("call", x)
        events = streams.tick()["call"]
    assert [w.p for w in windows(events)] == [None, None, None]


SHAPES = [(12000,), (12000, 1), (12000, 2), (12000, 64), (300, 65), (2, 12000), (10, 10, 10), (12000, 0), (0,), ()]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_stream_set_push_takes_the_shapes_feed_takes(detector: AngerDetector, shape: tuple[int, ...]) -> None:
    """`StreamSet.push` and `AngerDetector.feed` accept and refuse the same shapes, with the same events (stereo
    mixed down, not flattened), and no numpy warning."""
    rng = np.random.default_rng(7)
    x = (0.3 * rng.standard_normal(shape)).astype(np.float32) if shape else np.float32(0.1)
    streams = StreamSet(detector.model, detector.config)
    streams.add("s", 8000)
    detector.reset(8000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            want = detector.feed(x) + detector.flush()
        except ValueError as exc:
            with pytest.raises(ValueError, match="shape"):
                streams.push("s", x)
            assert "shape" in str(exc)
            return
        streams.push("s", x)
        streams.end("s")
        got = []
        while "s" in streams:
            got += streams.tick().get("s", [])
    assert [(type(e).__name__, e.t_start if isinstance(e, Window) else e.t) for e in got] == [
        (type(e).__name__, e.t_start if isinstance(e, Window) else e.t) for e in want
    ]
    assert max((e.t_end for e in got if isinstance(e, Window)), default=0.0) <= len(x) / 8000  # frames, not samples


def test_long_windows_with_a_one_sample_hop_keep_memory_bounded(detector: AngerDetector) -> None:
    """Every last window of a stream has its own length: nothing is kept per length (a cache of one array per
    length grew by a window's size per window), and a model call holds at most MAX_BATCH_SAMPLES."""
    from anger_stream.streams import MAX_BATCH_SAMPLES

    long = AngerDetector(detector.model, config=DetectorConfig(window_s=10, hop_s=1 / 16000))
    assert long._set.max_batch * long.config.window <= MAX_BATCH_SAMPLES
    x = (0.1 * np.random.default_rng(3).standard_normal(16_300)).astype(np.float32)
    events = long.feed(x) + long.flush()
    assert len(windows(events)) == 301
    assert audio._ones.cache_info().currsize <= 4


def test_loud_stereo_mixes_down_without_overflow(detector: AngerDetector) -> None:
    x = np.full((20_000, 2), 3e38, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.allclose(audio.mixdown(x), 3e38, rtol=1e-6)
        detector.feed(x)
        detector.flush()
