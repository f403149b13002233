"""`anger-stream report`: the timeline PNG from a recording or from a batch results line, and bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from anger_stream.batch import Job, score_file
from anger_stream.report import SIZE_PX, figure_size, summary_line

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))
CLI = str(Path(sys.executable).parent / "anger-stream")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)


def assert_png(path: Path, size: tuple[int, int] = SIZE_PX) -> None:
    image = imread(path)
    assert image.shape[:2] == (size[1], size[0])
    assert image[..., :3].std() > 0.05  # something was drawn


@pytest.fixture(scope="module")
def call(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic speech as an 8 kHz G.711 mu-law WAV, as a telephone archive holds it."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox")
    d = tmp_path_factory.mktemp("call")
    text = "I have been waiting on the phone for an hour and nobody can tell me where my order is."
    subprocess.run(["espeak-ng", "-w", str(d / "raw.wav"), text], check=True)
    subprocess.run(["sox", str(d / "raw.wav"), "-r", "8000", "-e", "mu-law", str(d / "call.wav")], check=True)
    return d / "call.wav"


def test_recording_renders_png(call: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "call.png"
    proc = run_cli("report", str(call), "-o", str(out), "--threshold", "0.4", "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    assert_png(out)


def test_batch_line_renders_png(call: Path, model: Path, tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    line = score_file(str(call), Job(str(model)))
    results.write_text(
        json.dumps(score_file(str(call.with_name("raw.wav")), Job(str(model)))) + "\n" + json.dumps(line)
    )
    out = tmp_path / "from_batch.png"
    proc = run_cli("report", str(results), "--path", "call.wav", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert_png(out)
    assert summary_line(line).startswith(f"call.wav: {line['duration']:.1f} s, ")


def test_bad_input_is_one_line(call: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEnonsense" * 50)
    proc = run_cli("report", str(corrupt), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1 and "cannot decode" in proc.stderr
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(score_file(str(corrupt), Job(None))) + "\n")
    proc = run_cli("report", str(results), "--path", str(corrupt), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 3 and "was not scored" in proc.stderr
    proc = run_cli("report", str(results), "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and "--path" in proc.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.shared
def test_real_recording_renders_png(model: Path, tmp_path: Path) -> None:
    clips = sorted((SHARED / "data" / "ased" / "angry").glob("*.flac"))
    if not clips:
        pytest.skip(f"needs the project's shared data ({SHARED}; set ANGER_SHARED)")
    out = tmp_path / "real.png"
    proc = run_cli("report", str(clips[0]), "-o", str(out), "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    assert_png(out)


def test_split_call_draws_one_lane_per_channel(two_channel_call: Path, model: Path, tmp_path: Path) -> None:
    """A recording with --channels split, and a split batch line: two p(anger) lanes, a title per channel."""
    out = tmp_path / "split.png"
    proc = run_cli("report", str(two_channel_call), "-o", str(out), "--channels", "split", "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    assert_png(out, figure_size(2))
    line = score_file(str(two_channel_call), Job(str(model), channels="split"))
    title = summary_line(line)
    assert title.startswith("call_stereo.wav: ") and "channel 0: " in title and "; channel 1: " in title
    assert "channel 0: 0% of speech angry" in title
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(line) + "\n")
    proc = run_cli("report", str(results), "--path", "call_stereo.wav", "-o", str(tmp_path / "batch.png"))
    assert proc.returncode == 0, proc.stderr
    assert_png(tmp_path / "batch.png", figure_size(2))
    proc = run_cli("report", str(results), "--path", "call_stereo.wav", "-o", str(out), "--channels", "split")
    assert proc.returncode == 2 and "--channels" in proc.stderr
