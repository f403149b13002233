"""The `anger-stream` command as a user runs it: files, stdin, telephone formats, and bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import CLI, assert_one_line_error, read_mono, run_cli, window_probs
from conftest import json_lines as lines

from anger_stream import AngerDetector

EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT = 3, 5, 6


def test_file_gives_json_lines_matching_score(speech_wav: Path) -> None:
    result = run_cli("--input", str(speech_wav), "--threshold", "0.5")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b""  # no terminal: no meter
    events = lines(result)
    assert events[0]["type"] == "status" and events[0]["state"] == "start"
    assert events[-1]["type"] == "status" and events[-1]["state"] == "end"
    x, rate = read_mono(speech_wav)
    np.testing.assert_allclose(window_probs(events), AngerDetector().score(x, rate), atol=1e-4, equal_nan=True)
    for e in events:
        if e["type"] == "window" and not e.get("silent"):
            assert set(e) == {"type", "t_start", "t_end", "p", "angry", "dbfs", "raised"} and 0 <= e["raised"] <= 1
            assert e["angry"] == (e["p"] >= 0.5)
    assert events[-1]["windows"] == len(window_probs(events))


def test_events_only_leaves_out_windows(speech_wav: Path) -> None:
    events = lines(run_cli("--input", str(speech_wav), "--threshold", "0", "--events-only"))
    assert [e["type"] for e in events] == ["status", "anger_start", "anger_end", "status"]


@pytest.mark.parametrize("kind", ["s16le", "f32le"])
def test_raw_stdin(speech_wav: Path, kind: str) -> None:
    x, _ = read_mono(speech_wav)
    data = (np.round(x * 32767).astype("<i2") if kind == "s16le" else x.astype("<f4")).tobytes()
    result = run_cli("--input", "-", "--format", kind, stdin=data)
    assert result.returncode == 0, result.stderr.decode()
    np.testing.assert_allclose(window_probs(lines(result)), AngerDetector().score(x), atol=1e-3, equal_nan=True)


@pytest.mark.parametrize(("fmt", "encoding"), [("mulaw", "mu-law"), ("alaw", "a-law"), ("s16le", "signed")])
def test_8khz_telephone_audio_on_stdin(speech_wav: Path, tmp_path: Path, fmt: str, encoding: str) -> None:
    raw = tmp_path / "call.raw"
    bits = "16" if fmt == "s16le" else "8"
    subprocess.run(
        ["sox", str(speech_wav), "-r", "8000", "-e", encoding, "-b", bits, "-t", "raw", str(raw)], check=True
    )
    result = run_cli("--input", "-", "--format", fmt, "--rate", "8000", stdin=raw.read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    events = lines(result)
    assert events[0]["sample_rate"] == 8000
    duration = len(raw.read_bytes()) / (2 if fmt == "s16le" else 1) / 8000
    assert events[-1]["t"] == pytest.approx(duration, abs=0.01)
    assert np.isfinite(window_probs(events)).sum() >= 3


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (44100, 1), (48000, 2)])
def test_files_of_any_rate_and_channel_count(speech_wav: Path, tmp_path: Path, rate: int, channels: int) -> None:
    path = tmp_path / f"speech_{rate}_{channels}.wav"
    subprocess.run(["sox", str(speech_wav), "-r", str(rate), "-c", str(channels), str(path)], check=True)
    result = run_cli("--input", str(path))
    assert result.returncode == 0, result.stderr.decode()
    x, _ = read_mono(path)
    np.testing.assert_allclose(window_probs(lines(result)), AngerDetector().score(x, rate), atol=1e-3, equal_nan=True)


def test_compressed_formats(speech_wav: Path, tmp_path: Path) -> None:
    for ext in ("flac", "ogg", "mp3"):
        path = tmp_path / f"speech.{ext}"
        x, rate = read_mono(speech_wav)
        sf.write(str(path), x, rate)
        result = run_cli("--input", str(path))
        assert result.returncode == 0, (ext, result.stderr.decode())
        assert len(window_probs(lines(result))) >= 4


def write_wav(path: Path, x: np.ndarray, rate: int = 16000) -> Path:
    sf.write(str(path), x, rate, subtype="PCM_16")
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda d: d / "missing.wav",
        lambda d: (d / "empty.wav").write_bytes(b"") and d / "empty.wav",
        lambda d: (d / "notes.txt").write_text("this is not audio\n" * 50) and d / "notes.txt",
        lambda d: (
            (d / "trunc.wav").write_bytes(write_wav(d / "full.wav", np.zeros(16000)).read_bytes()[:30])
            and d / "trunc.wav"
        ),
        lambda d: d,
    ],
    ids=["missing", "zero-length", "text", "truncated-header", "directory"],
)
def test_unusable_files_give_one_line_and_exit_3(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    assert_one_line_error(run_cli("--input", str(path)), EXIT_INPUT, str(path))


def test_truncated_data_is_decoded_as_far_as_it_goes(speech_wav: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.wav"
    cut.write_bytes(speech_wav.read_bytes()[: 44 + 2 * 40000 + 1])
    result = run_cli("--input", str(cut))
    assert result.returncode == 0, result.stderr.decode()
    assert lines(result)[-1]["t"] == pytest.approx(2.5, abs=0.01)


def test_wav_with_no_frames(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "noframes.wav", np.zeros(0))
    assert_one_line_error(run_cli("--input", str(path)), EXIT_INPUT, "zero frames")


@pytest.mark.parametrize(
    ("stdin", "fmt", "words"),
    [
        (b"", "s16le", ["no audio"]),
        (b"\x00\x01" * 20000 + b"\x07", "s16le", ["partial s16le sample"]),
        (np.array([0.1, np.nan, 0.2] * 20000, "<f4").tobytes(), "f32le", ["NaN"]),
        (np.array([0.1, np.inf] * 20000, "<f4").tobytes(), "f32le", ["NaN or infinite"]),
    ],
    ids=["empty", "odd-bytes", "nan", "inf"],
)
def test_bad_stdin(stdin: bytes, fmt: str, words: list[str]) -> None:
    result = run_cli("--input", "-", "--format", fmt, stdin=stdin)
    err = result.stderr.decode()
    assert result.returncode == EXIT_INPUT and err.startswith("anger-stream: error:") and "Traceback" not in err
    assert err.count("\n") == 1 and all(w in err for w in words), err
    assert all(json.loads(line)["type"] in ("status", "window") for line in result.stdout.decode().splitlines())


@pytest.mark.parametrize(
    ("signal_", "name"),
    [
        (np.zeros(48000), "zeros"),
        (np.sign(np.sin(np.arange(48000) / 7.0)), "clipping"),
        (0.3 + 0.05 * np.sin(np.arange(48000) / 9.0), "dc"),
        (np.zeros(1), "one-sample"),
    ],
)
def test_degenerate_audio_gives_finite_json(tmp_path: Path, signal_: np.ndarray, name: str) -> None:
    result = run_cli("--input", str(write_wav(tmp_path / f"{name}.wav", signal_)))
    assert result.returncode == 0, result.stderr.decode()
    text = result.stdout.decode()
    assert "NaN" not in text and "Infinity" not in text
    events = lines(result)
    assert events[-1]["state"] == "end"
    if name == "zeros":
        assert all(e.get("silent") for e in events if e["type"] == "window")
    if name == "one-sample":
        assert [e["type"] for e in events] == ["status", "status"]


def test_closed_stdout_exits_quietly(speech_wav: Path) -> None:
    result = subprocess.run(f"'{CLI}' --input '{speech_wav}' | head -n 1", shell=True, capture_output=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout.decode().count("\n") == 1
    assert result.stderr == b"", result.stderr.decode()
    pipe = subprocess.run(
        ["bash", "-c", f"set -o pipefail; '{CLI}' --input '{speech_wav}' --realtime | head -n 2"],
        capture_output=True,
        timeout=60,
    )
    assert pipe.returncode == 0 and pipe.stderr == b"", pipe.stderr.decode()


@pytest.mark.parametrize("redirect", ["> /dev/full", ">&-"], ids=["disk-full", "closed"])
def test_unwritable_stdout_is_one_line_and_exit_6(speech_wav: Path, redirect: str) -> None:
    result = subprocess.run(f"'{CLI}' --input '{speech_wav}' {redirect}", shell=True, capture_output=True, timeout=60)
    err = result.stderr.decode()
    assert result.returncode == EXIT_OUTPUT, err
    assert err.count("\n") == 1 and err.startswith("anger-stream: error: cannot write to stdout"), err


def test_sigterm_closes_the_stream_cleanly(speech_wav: Path) -> None:
    proc = subprocess.Popen(
        [CLI, "--input", str(speech_wav), "--realtime", "--threshold", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    first = [proc.stdout.readline(), proc.stdout.readline()]
    assert json.loads(first[1])["type"] == "window"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    events = [json.loads(line) for line in (b"".join(first) + out).decode().splitlines()]
    assert events[-2]["type"] == "anger_end" and events[-1]["state"] == "interrupted"
    assert events[-2]["ended_by"] == "interrupted" and events[-2]["duration"] > 0


def test_realtime_paces_the_output(speech_wav: Path) -> None:
    start = time.monotonic()
    result = run_cli("--input", str(speech_wav), "--realtime")
    x, rate = read_mono(speech_wav)
    assert time.monotonic() - start >= len(x) / rate - 0.1
    assert result.returncode == 0


def test_usage_errors_exit_2(speech_wav: Path, tmp_path: Path) -> None:
    assert run_cli("--threshold", "1.5", "--input", str(speech_wav)).returncode == 2
    assert run_cli("--format", "u8", "--input", "-", stdin=b"").returncode == 2
    assert run_cli("--hop", "2", "--input", str(speech_wav)).returncode == 2
    assert run_cli("--no-such-option").returncode == 2


def test_bad_model_file(speech_wav: Path, tmp_path: Path) -> None:
    bogus = tmp_path / "model.onnx"
    bogus.write_bytes(b"not a model")
    assert_one_line_error(run_cli("--input", str(speech_wav), "--model", str(bogus)), EXIT_MODEL, "model")
    assert_one_line_error(run_cli("--input", str(speech_wav), "--model", str(tmp_path / "none.onnx")), EXIT_MODEL)


def test_sigterm_while_the_last_windows_are_scored_ends_cleanly(tmp_path: Path) -> None:
    """With 10 s windows every window of a 2 s file is scored when the input ends (about 3,300 here, seconds of
    work): SIGTERM then waits for them, and the command ends with its final status line and exit code 0."""
    path = tmp_path / "noise.wav"
    sf.write(path, (0.1 * np.random.default_rng(5).standard_normal(32_000)).astype(np.float32), 16_000)
    proc = subprocess.Popen(
        [CLI, "--input", str(path), "-q", "--window", "10", "--hop", "0.0003", "--model", "int8"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert json.loads(proc.stdout.readline())["state"] == "start"
        time.sleep(2.0)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "internal error" not in err, err
    assert json.loads(out.splitlines()[-1])["state"] in ("end", "interrupted")
