"""tools.evaluate: synthetic calls, the rule sweep by the live event logic, and the README's table from real
clips of a validation and a test speaker."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from anger_stream.config import DetectorConfig
from anger_stream.events import AngerStart, Window
from anger_stream.tracker import EventTracker
from tools.evaluate import false_alarms
from tools.evaluate.calls import Call, ScoredCalls, build_calls
from tools.manifest import Clip


def scored(ps: list[list[float]], passages: list[tuple[float, float] | None]) -> ScoredCalls:
    """Calls whose windows (1.2 s every 0.6 s) have the given p (NaN: silent)."""
    width = max(map(len, ps))
    p = np.full((len(ps), width), np.nan)
    for i, row in enumerate(ps):
        p[i, : len(row)] = row
    t_start = np.tile(np.arange(width) * 0.6, (len(ps), 1))
    calls = [
        Call("c", str(i), np.zeros(int((len(r) * 0.6 + 0.6) * 16000)), a)
        for i, (r, a) in enumerate(zip(ps, passages, strict=True))
    ]
    return ScoredCalls(calls, p, t_start, t_start + 1.2, np.array([len(r) for r in ps]))


def test_run_rule_is_the_live_event_logic_per_call() -> None:
    rng = np.random.default_rng(2)
    ps = [np.where(rng.random(n) < 0.2, np.nan, rng.random(n)).tolist() for n in (30, 55, 41, 12)]
    s = scored(ps, [None] * 4)
    config = DetectorConfig(threshold=0.7, patience=2, hold_s=1.2)
    got = false_alarms.run_rule(s, config)
    for i, row in enumerate(ps):
        tracker = EventTracker(config)
        starts = [
            e.t
            for j, p in enumerate(row)
            for e in tracker.update(Window(0.6 * j, 0.6 * j + 1.2, None if np.isnan(p) else p, False, -20.0))
            if isinstance(e, AngerStart)
        ]
        assert [a for a, _ in got[i]] == pytest.approx(starts)


def test_smoothing_averages_logits_of_scored_windows() -> None:
    p = np.array([[0.9, np.nan, 0.1, 0.5]])
    q = false_alarms.smooth(p, 2)
    assert q[0, 0] == pytest.approx(0.9) and np.isnan(q[0, 1]) and q[0, 2] == pytest.approx(0.1)
    assert q[0, 3] == pytest.approx(0.25, abs=0.01)  # mean logit of 0.1 and 0.5


def test_false_alarms_catches_and_delays() -> None:
    calm = [0.1] * 20 + [0.95] + [0.1] * 20  # one false alarm
    angry = [0.1] * 10 + [0.95, 0.95, np.nan, 0.95] + [0.1] * 10  # passage from 5.4 s; angry window ends at 7.2
    late = [0.1] * 10 + [0.1] * 8 + [0.95] + [0.1] * 5  # its angry window ends at 12.0: 6.6 s in
    s = scored([calm, angry, late], [None, (5.4, 9.0), (5.4, 11.0)])
    m = false_alarms.measure(s, false_alarms.run_rule(s, DetectorConfig(threshold=0.9, hold_s=1.2)), 1.2)
    assert m["false_alarms"] == 1 and m["calm_speech_hours"] == pytest.approx(41 * 0.6 / 3600, abs=1e-4)
    assert (m["passages"], m["caught"], m["caught_within_3s"]) == (2, 1.0, 0.5)
    assert m["median_delay_s"] == pytest.approx((1.8 + 6.6) / 2) and m["segments_per_caught"] == 1.0
    split = false_alarms.measure(s, false_alarms.run_rule(s, DetectorConfig(threshold=0.9, hold_s=0.0)), 1.2)
    assert split["segments_per_caught"] == 1.5


def test_calls_join_a_speakers_clips_and_insert_one_angry_passage() -> None:
    clips = [Clip(Path(f"{i}.wav"), "c", "s1", int(i >= 20), 3.0) for i in range(26)]
    audio = {str(c.path): np.full(48000, 0.1 * (1 + c.anger), np.float32) for c in clips}
    calls = build_calls(clips, seed=1, load=lambda clip: audio[str(clip.path)])
    calm, angry = [c for c in calls if c.passage is None], [c for c in calls if c.passage is not None]
    assert len(calm) == len(angry) == 2  # 20 calm clips of 3 s: 30 s a call
    for c in angry:
        a, b = c.passage
        assert 5.0 <= b - a <= 20.0 + 1.5
        inside = c.audio[round(a * 16000) : round(b * 16000)]
        assert np.isclose(inside[0], 0.2) and np.isclose(inside[-1], 0.2)
        assert not np.any(np.isclose(np.delete(c.audio, np.s_[round(a * 16000) : round(b * 16000)]), 0.2))
    for c in calls:  # pauses are a low noise floor, not digital zeros
        assert np.all(c.audio != 0) and np.all(np.abs(c.audio) < 0.21)


def test_table_from_real_clips(shared: Path, tmp_path: Path, capsys) -> None:
    data = shared / "data" / "ravdess"
    with (data / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    picked = [r for r in rows if r["speaker"] in ("17", "23") and r["emotion"] in ("neutral", "calm", "angry")]
    folder = tmp_path / "data" / "ravdess"
    folder.mkdir(parents=True)
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(data / r["path"])} for r in picked)
    out = tmp_path / "fa.json"
    args = ["--model", "fp32", "--data", str(tmp_path / "data"), "--json", str(out), "--cache", str(tmp_path / "c")]
    false_alarms.main(args)
    result = json.loads(out.read_text())
    assert result["validation"]["speakers"] == ["ravdess:17"] and result["test"]["speakers"] == ["ravdess:23"]
    keys = ("threshold", "patience", "smooth", "hold_s")
    rules = [dict(zip(keys, r[:4], strict=True)) for r in result["grid"]["rows"]]
    assert result["chosen"] in rules and len(rules) == 25 * 3 * 3 * 8
    chosen = result["validation"]["chosen"]
    for channel in ("16k", "telephone"):
        assert chosen[channel]["all"]["false_alarms_per_hour"] <= false_alarms.MAX_FA_PER_HOUR
        assert chosen[channel]["all"] == chosen[channel]["ravdess"]
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 2 + 2 + 4 and table[2].startswith("| validation, all | 16 kHz |")
    assert sorted(p.name for p in (tmp_path / "c").iterdir())[0].endswith("-test-16k-0-v1.npz")
    false_alarms.main(args)  # from the cache: the same result
    assert json.loads(out.read_text()) == result
