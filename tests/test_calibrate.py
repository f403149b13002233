"""`anger-stream calibrate`: thresholds that hold their false-alarm rate on held-back recordings of the same
channel, the live detector's event logic for false alarms per hour, labels, the settings file, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli
from scipy.signal import lfilter

from anger_stream.calibrate import count_starts, threshold_for_rate
from anger_stream.detector import AngerDetector
from anger_stream.events import AngerStart, Window

TEST_ACTORS = ("21", "22", "23", "24")
TARGET = 0.05


def test_threshold_for_rate_allows_at_most_the_target() -> None:
    scores = np.linspace(0.0, 0.999, 1000)
    for target in (0.01, 0.05, 0.2):
        t = threshold_for_rate(scores, target)
        assert np.mean(scores >= t) <= target and np.mean(scores >= t - 0.002) > target
    assert threshold_for_rate(np.array([0.2, 0.9]), 0.5) == pytest.approx(0.201)


def test_false_alarms_are_counted_by_the_live_detectors_event_logic(peak_model: Path) -> None:
    """Noise bursts between a tone and silence: count_starts equals the anger_start lines of feed() + flush()
    for patience 1 and 2 (the first burst, within the first hop, makes one angry window: patience 1 only)."""
    rng = np.random.default_rng(4)
    tone = (0.1 * np.sin(2 * np.pi * 220 * np.arange(48000) / 16000)).astype(np.float32)
    parts = []
    for burst_s in (0.4, 2.5, 1.8, 3.0):
        parts += [(0.1 * rng.standard_normal(int(burst_s * 16000))).astype(np.float32), tone]
    x = np.concatenate([*parts, np.zeros(16000, np.float32)])
    counts = set()
    for patience in (1, 2):
        detector = AngerDetector(peak_model, 0.6, patience=patience, hold_s=0.0)
        live = [e for i in range(0, len(x), 800) for e in detector.feed(x[i : i + 800])] + detector.flush()
        windows = [e for e in AngerDetector(peak_model).analyse(x) if isinstance(e, Window)]
        starts = sum(isinstance(e, AngerStart) for e in live)
        assert count_starts(windows, detector.config) == starts
        counts.add(starts)
    assert len(counts) == 2  # patience made a difference


@pytest.fixture(scope="module")
def channels(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[Path]]]:
    """The non-angry speech of RAVDESS's test actors through two channels, each split into a calibration half
    and a held-back half (alternate files): 16 kHz as recorded, and a strong pre-emphasis (a thin, bright
    microphone), both 16-bit WAV."""
    data = shared / "data" / "ravdess"
    with (data / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] in TEST_ACTORS and r["anger"] == "0"]
    root = tmp_path_factory.mktemp("channels")
    out: dict[str, dict[str, list[Path]]] = {"clean": {"fit": [], "held": []}, "bright": {"fit": [], "held": []}}
    for i, row in enumerate(rows):
        x, rate = sf.read(str(data / row["path"]), dtype="float64")
        half = ("fit", "held")[i % 2]
        for name, y in (("clean", x), ("bright", np.clip(lfilter([1.0, -0.97], [1.0], x), -1, 1))):
            path = root / name / half / f"{Path(row['path']).stem}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), y, rate, subtype="PCM_16")
            out[name][half].append(path)
    return out


def held_back_rate(paths: list[Path], threshold: float, model: Path) -> float:
    """Share of the scored windows of these recordings at or above the threshold (AngerDetector.score)."""
    detector = AngerDetector(model)
    p = np.concatenate([detector.score(*sf.read(str(path), dtype="float32")) for path in paths])
    p = p[~np.isnan(p)]
    return float(np.mean(p >= threshold))


def test_each_channel_gets_a_threshold_that_holds_on_its_held_back_files(
    channels: dict[str, dict[str, list[Path]]], model: Path, tmp_path: Path
) -> None:
    thresholds = {}
    for name, halves in channels.items():
        settings = tmp_path / f"{name}.json"
        folder = halves["fit"][0].parent
        proc = run_cli(
            "calibrate",
            str(folder),
            "--target-fpr",
            str(TARGET),
            "--model",
            str(model),
            "--out",
            str(settings),
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["recordings"] == len(halves["fit"]) and result["auroc"] is None
        assert result["window_fpr"] <= TARGET
        assert [row["threshold"] for row in result["table"]][:2] == [0.5, 0.55]
        assert set(result["false_alarms_per_hour"]) == {"patience_1", "patience_2"}
        assert json.loads(settings.read_text()) == result["settings"]
        assert result["settings"]["threshold"] == result["threshold"]
        assert b"threshold for a window false-alarm rate of at most 0.05" in proc.stderr
        thresholds[name] = result["threshold"]
        # the settings file is what --config loads: the live detector applies its threshold
        proc = run_cli("--config", str(settings), "-i", str(halves["held"][0]), "-q", "--model", str(model))
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(line) for line in proc.stdout.splitlines()]
        windows = [w for w in lines if w["type"] == "window" and w["p"] is not None]
        clear = [w for w in windows if abs(w["p"] - result["threshold"]) > 1e-4]  # p is rounded to 4 decimals
        assert clear and all(w["angry"] == (w["p"] >= result["threshold"]) for w in clear)
    assert abs(thresholds["clean"] - thresholds["bright"]) > 0.1, thresholds
    for name, halves in channels.items():
        rate = held_back_rate(halves["held"], thresholds[name], model)
        assert TARGET / 2.5 <= rate <= TARGET * 2, (name, thresholds[name], rate)
    # the other channel's threshold does not hold: what calibrating on one's own channel is for
    assert held_back_rate(channels["bright"]["held"], thresholds["clean"], model) > TARGET * 2


def test_labels_give_auroc_and_true_positive_rates(shared: Path, model: Path, tmp_path: Path) -> None:
    data = shared / "data" / "ravdess"
    with (data / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] == "22"]
    manifest = tmp_path / "labels.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "anger", "speaker"])
        writer.writerows([[str(data / r["path"]), r["anger"], "agent-007"] for r in rows])
    proc = run_cli("calibrate", "--labels", str(manifest), "--model", str(model), "--quiet", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""
    result = json.loads(proc.stdout)
    assert result["recordings"] == len(rows) and result["angry_windows"] > 0
    lo, hi = result["auroc_ci95"]
    assert 0.5 < lo <= result["auroc"] <= hi <= 1.0
    tprs = [row["tpr"] for row in result["table"]]
    assert tprs == sorted(tprs, reverse=True) and tprs[0] > tprs[-1]


def test_bad_input_is_one_line(tmp_path: Path, speech_wav: Path) -> None:
    proc = run_cli("calibrate", str(tmp_path))
    assert proc.returncode == 3
    assert proc.stderr.decode().splitlines()[-1].startswith("anger-stream: error: no audio files found")
    proc = run_cli("calibrate", str(speech_wav), "--target-fpr", "1.5")
    assert proc.returncode == 2 and b"--target-fpr" in proc.stderr
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,angry\nx.wav,1\n")
    proc = run_cli("calibrate", "--labels", str(manifest))
    assert proc.returncode == 2 and b"no column anger" in proc.stderr and proc.stderr.count(b"\n") == 1
    manifest.write_text(f"path,anger\n{speech_wav},1\n")
    proc = run_cli("calibrate", "--labels", str(manifest), "-q")
    assert proc.returncode == 3 and b"no non-angry speech" in proc.stderr
