"""anger_stream.channels: which channels are scored (mix, split, one), and one streaming detector per channel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error, json_lines, run_cli

from anger_stream import channels
from anger_stream.detector import AngerDetector
from anger_stream.events import AngerStart, to_json


def test_select_mixes_splits_or_picks() -> None:
    x = np.array([[0.2, 0.4], [0.6, 0.8], [0.0, 1.0]], dtype=np.float32)
    [(none, mixed)] = channels.select(x)
    assert none is None and np.allclose(mixed, [0.3, 0.7, 0.5])
    assert [(c, list(s)) for c, s in channels.select(x, "split")] == [(0, [0.2, 0.6, 0.0]), (1, [0.4, 0.8, 1.0])]
    [(one, right)] = channels.select(x, channel=1)
    assert one == 1 and list(right) == [0.4, 0.8, 1.0]
    assert [c for c, _ in channels.select(x[:, 0], "split")] == [0]  # mono: one channel
    with pytest.raises(ValueError, match="no channel 2: the audio has 2 channels"):
        channels.select(x, channel=2)
    with pytest.raises(ValueError, match="--channels must be one of mix, split"):
        channels.select(x, "left")
    with pytest.raises(ValueError, match="cannot be combined"):
        channels.select(x, "split", 0)


def test_split_detector_equals_one_detector_per_channel(peak_model: Path) -> None:
    """A tone on channel 0, noise bursts (scored angry by the peak model) on channel 1, fed in odd blocks."""
    rng = np.random.default_rng(5)
    n = 16000 * 8
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(n) / 16000)
    noise = 0.1 * rng.standard_normal(n) * (np.arange(n) // 32000 % 2)
    x = np.stack([tone, noise], axis=1).astype(np.float32)
    split = channels.SplitDetector(AngerDetector(peak_model), 2)
    events = [e for i in range(0, n, 1234) for e in split.feed(x[i : i + 1234], 16000)] + split.flush()
    for c in (0, 1):
        alone = AngerDetector(peak_model)
        expected = [e for i in range(0, n, 1234) for e in alone.feed(x[i : i + 1234, c])] + alone.flush()
        assert [e.event for e in events if e.channel == c] == expected
    starts = [e for e in events if isinstance(e.event, AngerStart)]
    assert starts and {e.channel for e in starts} == {1}
    line = json.loads(to_json(starts[0]))
    assert list(line)[:2] == ["channel", "type"] and line["channel"] == 1 and line["type"] == "anger_start"


def test_live_detector_reads_one_channel_or_each(two_channel_call: Path, model: Path) -> None:
    """The console script on a real call recording angry on channel 1 only."""
    args = ["-i", str(two_channel_call), "--model", str(model), "-q"]
    proc = run_cli(*args, "--channels", "split")
    assert proc.returncode == 0, proc.stderr
    lines = json_lines(proc)
    assert lines[0]["type"] == "status" and lines[0]["channels"] == "split" and lines[-1]["state"] == "end"
    events = [line for line in lines if line["type"] != "status"]
    assert {line["channel"] for line in events} == {0, 1}
    assert {line["channel"] for line in events if line["type"] == "anger_start"} == {1}
    per_channel = {}
    for c in (0, 1):
        proc = run_cli(*args, "--channel", str(c))
        assert proc.returncode == 0, proc.stderr
        alone = [line for line in json_lines(proc) if line["type"] != "status"]
        assert [{"channel": c, **line} for line in alone] == [line for line in events if line["channel"] == c]
        per_channel[c] = alone
    assert not any(line["type"] == "anger_start" for line in per_channel[0])
    assert_one_line_error(run_cli(*args, "--channel", "2"), 3, "no channel 2")
    assert_one_line_error(run_cli("-i", "-", "--channel", "0", stdin=b""), 2, "--input")
