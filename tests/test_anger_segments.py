"""Anger segments end to end: the `anger-stream` command on files with pauses inside an angry passage, input
that ends mid-anger, SIGTERM, and a model's p(raised voice) carried into the events."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from conftest import CLI, run_cli
from conftest import json_lines as lines
from onnx import TensorProto, helper

from anger_stream import AngerDetector, AngerEnd, AngerStart, Window

RATE = 16000
# with the peak model (conftest.peak_model): noise scores near 1 ("angry"), a sine near 0.08 ("calm"), and the
# floor is below the silence gate (a pause)
rng = np.random.default_rng(5)


def angry(s: float) -> np.ndarray:
    return (0.1 * rng.standard_normal(round(s * RATE))).astype(np.float32)


def calm(s: float) -> np.ndarray:
    return (0.1 * np.sin(2 * np.pi * 220 * np.arange(round(s * RATE)) / RATE)).astype(np.float32)


def pause(s: float) -> np.ndarray:
    return (1e-4 * rng.standard_normal(round(s * RATE))).astype(np.float32)


def write(path: Path, *parts: np.ndarray, rate: int = RATE) -> Path:
    x = np.concatenate(parts)
    if rate != RATE:
        from scipy.signal import resample_poly

        x = resample_poly(x, rate, RATE).astype(np.float32)
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


def anger_events(result: subprocess.CompletedProcess) -> list[dict]:
    assert result.returncode == 0, result.stderr.decode()
    return [e for e in lines(result) if e["type"] in ("anger_start", "anger_end")]


def test_an_angry_passage_with_pauses_is_one_segment(peak_model: Path, tmp_path: Path) -> None:
    """Three angry stretches split by a 2 s pause and a 1.6 s calmer phrase, then calm speech: one segment
    with a hold of 1.5 s, ended by the calm speech; three without a hold."""
    path = write(tmp_path / "call.wav", calm(2), angry(2), pause(2), angry(2), calm(1.6), angry(2), calm(4))
    events = anger_events(run_cli("-i", str(path), "--model", str(peak_model), "--hold", "1.5"))
    assert [e["type"] for e in events] == ["anger_start", "anger_end"]
    start, end = events
    assert 1.0 <= start["onset"] <= 2.0 and end["ended_by"] == "calm"
    assert 11.6 <= end["last_angry"] <= 12.8 and end["t"] == pytest.approx(end["last_angry"] + 1.8, abs=1e-3)
    assert end["duration"] == pytest.approx(end["last_angry"] - start["onset"], abs=1e-3)
    assert start["raised_max"] is None and end["raised_max"] is None  # the model has no raised output
    split = anger_events(run_cli("-i", str(path), "--model", str(peak_model), "--hold", "0"))
    assert [e["type"] for e in split] == ["anger_start", "anger_end"] * 3


def test_input_that_ends_mid_anger_ends_the_segment_as_input_end(peak_model: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "hangup.wav", calm(2), angry(3))
    result = run_cli("-i", str(path), "--model", str(peak_model), "--hold", "1.5")
    start, end = anger_events(result)
    assert end["ended_by"] == "input_end" and end["t"] == pytest.approx(5.0)
    assert end["last_angry"] == pytest.approx(4.8) and end["duration"] == pytest.approx(4.8 - start["onset"])
    assert lines(result)[-1] == {**lines(result)[-1], "state": "end", "t": 5.0}


@pytest.mark.parametrize("rate", [8000, 44100])
def test_the_final_status_is_where_the_last_window_ends(peak_model: Path, tmp_path: Path, rate: int) -> None:
    path = write(tmp_path / f"call_{rate}.wav", calm(2), angry(2.8), rate=rate)  # 4.8 s: a whole last window
    events = lines(run_cli("-i", str(path), "--model", str(peak_model)))
    last = [e for e in events if e["type"] == "window"][-1]
    assert last["t_end"] == pytest.approx(4.8, abs=1e-3) and events[-1]["t"] == pytest.approx(last["t_end"], abs=1e-3)


def test_sigterm_mid_anger_ends_the_segment_as_interrupted(peak_model: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "long.wav", calm(1.2), angry(30))
    proc = subprocess.Popen(
        [CLI, "-i", str(path), "--model", str(peak_model), "--realtime", "--events-only"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = [proc.stdout.readline(), proc.stdout.readline()]
    assert json.loads(head[1])["type"] == "anger_start"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line) for line in (b"".join(head) + out).decode().splitlines()]
    assert [e["type"] for e in events] == ["status", "anger_start", "anger_end", "status"]
    start, end, status = events[1:]
    assert end["ended_by"] == "interrupted" and status["state"] == "interrupted"
    assert end["duration"] > 0 and end["t"] == pytest.approx(status["t"]) and end["t"] >= start["t"]


def two_output_model(shipped: Path, path: Path) -> Path:
    """The shipped network with a second output, raised = 1 - p."""
    m = onnx.load(str(shipped))
    g = m.graph
    g.initializer.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    g.node.append(helper.make_node("Sub", ["one", "p"], ["raised"]))
    g.output.append(helper.make_tensor_value_info("raised", TensorProto.FLOAT, ["batch"]))
    onnx.save(m, str(path))
    return path


def test_a_models_raised_output_reaches_the_windows_and_segments(model: Path, tmp_path: Path) -> None:
    two = AngerDetector(two_output_model(model, tmp_path / "two.onnx"), threshold=0.0, hold_s=1.0)
    assert two.model.has_raised and not AngerDetector(model).model.has_raised
    x = np.concatenate([angry(3), pause(3), angry(2)])
    events = two.analyse(x)
    windows = [e for e in events if isinstance(e, Window)]
    assert any(w.silent for w in windows)
    for w in windows:
        assert (w.raised is None) == w.silent
        if not w.silent:
            assert w.raised == pytest.approx(1 - w.p, abs=1e-6)
            assert w.to_dict()["raised"] == round(w.raised, 4)
    segments = [e for e in events if isinstance(e, AngerStart | AngerEnd)]
    assert [type(e) for e in segments] == [AngerStart, AngerEnd, AngerStart, AngerEnd]
    end = segments[1]
    inside = [w.raised for w in windows if not w.silent and end.last_angry - 1e-6 >= w.t_end]
    assert end.raised_max == pytest.approx(max(inside)) and end.to_dict()["raised_max"] == round(max(inside), 4)
    assert segments[0].raised_max == pytest.approx(windows[0].raised)
    # the same audio streamed in chunks gives the same events
    streamed = [e for i in range(0, len(x), 1600) for e in two.feed(x[i : i + 1600])] + two.flush()
    assert [e.to_dict() for e in streamed] == [e.to_dict() for e in events]


def test_hold_from_a_settings_file_and_the_option_checked(peak_model: Path, tmp_path: Path) -> None:
    path = write(tmp_path / "call.wav", calm(2), angry(2), pause(2), angry(2), calm(4))
    settings = tmp_path / "site.json"
    settings.write_text('{"hold": 0}')
    split = anger_events(run_cli("-i", str(path), "--model", str(peak_model), "--config", str(settings)))
    assert [e["type"] for e in split] == ["anger_start", "anger_end"] * 2
    one = anger_events(run_cli("-i", str(path), "--model", str(peak_model), "--config", str(settings), "--hold", "3"))
    assert [e["type"] for e in one] == ["anger_start", "anger_end"]  # the option wins over the file
    settings.write_text('{"hold": -1}')
    bad = run_cli("-i", str(path), "--config", str(settings))
    assert bad.returncode == 2 and bad.stderr.decode() == (
        f"anger-stream: error: --config {settings}: hold must be from 0 to 60 s, not -1\n"
    )
    bad = run_cli("-i", str(path), "--hold", "61")
    assert bad.returncode == 2 and b"--hold must be from 0 to 60 s, not 61" in bad.stderr
