"""Real capture through PortAudio from a virtual PulseAudio microphone (a null sink's monitor).

A user-space PulseAudio daemon is started per test module; `paplay` plays recordings into the null sink and
the `anger-stream` CLI hears them through its default input device, bit-exact (norewinds=1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import CLI, pulse_daemon, read_mono

from anger_stream import AngerDetector, audio

EXIT_DEVICE = 4
SINK = "vmic_sink"

pytestmark = pytest.mark.mic


@pytest.fixture()
def pulse(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PulseAudio daemon with a 16 kHz mono null sink whose monitor is the default source."""
    with pulse_daemon(
        tmp_path,
        f"load-module module-null-sink sink_name={SINK} format=s16le rate=16000 channels=1 norewinds=1\n"
        f"set-default-source {SINK}.monitor\n",
    ) as env:
        yield env


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen:
    """The CLI as a terminal starts it: SIGINT at its default (a child inherits "ignored" from its parent, and
    Python then installs no Ctrl-C handler; earlier tests in this process may have left it so)."""
    return subprocess.Popen(
        [CLI, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_event(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, proc.stderr.read().decode()
    return json.loads(line)


def listen(env: dict[str, str], clip: Path, threshold: float) -> list[tuple[float, dict]]:
    """Play a clip into the virtual microphone; return (arrival time, event) for everything the CLI wrote."""
    proc = start_cli(env, "--threshold", str(threshold))
    assert read_event(proc)["state"] == "start"
    time.sleep(0.5)
    subprocess.run(["paplay", f"--device={SINK}", str(clip)], env=env, check=True, timeout=30)
    time.sleep(1.5)  # the trailing silence closes the last windows
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    arrival = time.monotonic()
    return [(arrival, json.loads(line)) for line in out.decode().splitlines()]


def offline_scores(wins: list[dict], x: np.ndarray) -> np.ndarray:
    """Offline score() of the captured stream: silence, the clip from an offset, silence.

    The offset is found from the windows' reported levels to within a few samples, then pinned down as
    the one whose offline scores fit the live ones best (the capture is bit-exact, so one fits).
    """
    reported = np.array([w["dbfs"] for w in wins])
    live = np.array([np.nan if w["p"] is None else w["p"] for w in wins])

    def stream(d: int) -> np.ndarray:
        return np.concatenate([np.zeros(d, np.float32), x, np.zeros(48000, np.float32)])

    def level_mismatch(d: int) -> float:
        s = stream(d)
        levels = [audio.dbfs(s[round(w["t_start"] * 16000) : round(w["t_end"] * 16000)]) for w in wins]
        return float(np.abs(np.array(levels) - reported).sum())

    coarse = min(range(0, round(wins[-1]["t_end"] * 16000), 800), key=level_mismatch)
    fine = min(range(max(coarse - 800, 0), coarse + 800, 10), key=level_mismatch)
    detector = AngerDetector()
    candidates = [detector.score(stream(d))[: len(live)] for d in range(max(fine - 40, 0), fine + 40)]
    return min(candidates, key=lambda r: np.nanmax(np.abs(r - live[: len(r)])))


@pytest.mark.shared
def test_microphone_windows_timing_and_scores(pulse: dict[str, str], angry_clip: Path, tmp_path: Path) -> None:
    wav = tmp_path / "angry.wav"
    subprocess.run(["sox", str(angry_clip), "-b", "16", str(wav)], check=True)
    proc = start_cli(pulse, "--threshold", "0.5")
    start = read_event(proc)
    assert start["state"] == "start" and start["sample_rate"] == 16000 and start["source"] == "microphone"
    player = subprocess.Popen(["paplay", f"--device={SINK}", str(wav)], env=pulse)
    arrivals, events = [], []
    while len(arrivals) < 10:
        event = read_event(proc)
        events.append(event)
        if event["type"] == "window":
            arrivals.append(time.monotonic())
    player.wait(timeout=30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    events += [json.loads(line) for line in out.decode().splitlines()]
    assert events[-1]["state"] == "interrupted"

    wins = [e for e in events if e["type"] == "window"]
    ends = np.array([w["t_end"] for w in wins[:10]])
    np.testing.assert_allclose(np.diff(ends), 0.6, atol=1e-9)  # exactly one hop apart in stream time
    assert ends[0] == pytest.approx(1.2)
    gaps = np.diff(arrivals)
    assert np.median(gaps) == pytest.approx(0.6, abs=0.1)  # and in wall-clock time

    x, _ = read_mono(wav)
    reference = offline_scores(wins, x)
    live = np.array([np.nan if w["p"] is None else w["p"] for w in wins])
    n = min(len(live), len(reference))
    scored = np.isfinite(live[:n]) & np.isfinite(reference[:n])
    assert scored.sum() >= 4
    np.testing.assert_allclose(live[:n][scored], reference[:n][scored], atol=1e-3)


@pytest.mark.shared
def test_angry_speech_starts_anger_and_calm_does_not(
    pulse: dict[str, str], angry_clip: Path, calm_clip: Path, tmp_path: Path
) -> None:
    kinds = {}
    for name, clip in (("angry", angry_clip), ("calm", calm_clip)):
        wav = tmp_path / f"{name}.wav"
        subprocess.run(["sox", str(clip), "-b", "16", str(wav)], check=True)
        kinds[name] = [e["type"] for _, e in listen(pulse, wav, threshold=0.5)]
    assert "anger_start" in kinds["angry"] and "anger_end" in kinds["angry"]
    assert "anger_start" not in kinds["calm"]


def test_vanished_microphone_is_an_error_not_a_hang(pulse: dict[str, str]) -> None:
    proc = start_cli(pulse, "--quiet")
    assert read_event(proc)["state"] == "start"
    assert read_event(proc)["type"] == "window"  # capturing
    os.kill(int(pulse["DAEMON_PID"]), signal.SIGKILL)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_DEVICE
    assert err.decode().startswith("anger-stream: error:") and "Traceback" not in err.decode()
    assert err.decode().count("\n") == 1


def test_unknown_device_name(pulse: dict[str, str]) -> None:
    result = subprocess.run([CLI, "--device", "no-such-microphone"], env=pulse, capture_output=True, timeout=30)
    assert result.returncode == EXIT_DEVICE and result.stdout == b""
    assert "no-such-microphone" in result.stderr.decode() and result.stderr.decode().count("\n") == 1


def test_list_devices(pulse: dict[str, str]) -> None:
    result = subprocess.run([CLI, "--list-devices", "--json"], env=pulse, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr.decode()
    devices = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert any(d["name"] == "pulse" for d in devices) and any(d["default"] for d in devices)
    table = subprocess.run([CLI, "--list-devices"], env=pulse, capture_output=True, timeout=30)
    assert table.returncode == 0 and table.stdout == b"" and "pulse" in table.stderr.decode()
