"""tools.evaluate and the telephone channel: synthetic clips with a tiny hand-built ONNX model, SoX, real clips."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SHARED

from tools.channels import mulaw_encode, telephone
from tools.evaluate import auroc, egemaps, scoring

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "anger_fcn.onnx"
SR = 16_000


def _tone(seconds: float, rate: int = SR, freq: float = 440.0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)).astype(np.float32)


def _write_manifest(
    folder: Path, rows: list[tuple[str, int, np.ndarray, int]], corpus: str = "synth", speakers: str = "01"
) -> Path:
    """FLAC files and a manifest.csv; corpus 'synth' has only a test split, 'ravdess' is split by speaker."""
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "corpus", "speaker", "gender", "emotion", "anger", "duration_s"])
        for (name, anger, x, rate), speaker in zip(rows, speakers.split() * len(rows), strict=False):
            sf.write(folder / name, x, rate, subtype="PCM_16")
            writer.writerow([name, corpus, speaker, "f", "angry" if anger else "neutral", anger, len(x) / rate])
    return folder / "manifest.csv"


@pytest.fixture
def synth_manifest(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    noise = [np.clip(0.05 * rng.normal(size=2 * SR), -1, 1).astype(np.float32) for _ in range(3)]
    rows = [(f"noise{i}.flac", 1, x, SR) for i, x in enumerate(noise)]
    rows += [("tone_a.flac", 0, _tone(2.0), SR), ("tone_b.flac", 0, _tone(2.0, freq=300), SR)]
    rows += [("tone_8k.flac", 0, _tone(2.2, rate=8000), 8000)]  # resampled to 16 kHz; a short last window
    rows += [("half_silent.flac", 0, np.concatenate([_tone(1.2), np.zeros(int(1.8 * SR), np.float32)]), SR)]
    rows += [("silent.flac", 0, np.zeros(2 * SR, np.float32), SR), ("short.flac", 1, _tone(0.5), SR)]
    return _write_manifest(tmp_path, rows)


def test_silence_gate_and_windows(synth_manifest: Path) -> None:
    clips = {c.path.name: c for c in scoring.load_clips([synth_manifest], "test")}
    segments, gated = scoring.clip_segments(clips["half_silent.flac"])
    assert ([len(s) for s in segments], gated) == ([19200, 19200], 2)  # 3 s: windows at 0, .6, 1.2, 1.8 s
    assert scoring.clip_segments(clips["silent.flac"]) == ([], 2)
    assert scoring.clip_segments(clips["short.flac"]) == ([], 0)
    assert [len(s) for s in scoring.clip_segments(clips["tone_8k.flac"])[0]] == [19200, 19200, 16000]


def test_end_to_end(synth_manifest: Path, peak_model: Path, tmp_path: Path) -> None:
    out, plot = tmp_path / "out.json", tmp_path / "roc.png"
    auroc.main(
        ["--model", str(peak_model), "--manifest", str(synth_manifest), "--json", str(out)]
        + ["--compare", str(peak_model), "--plot", str(plot)]
    )
    result = json.loads(out.read_text())
    assert result["auroc"] == 1.0 and result["utterance_auroc"] == 1.0
    assert result["auroc_ci95"][1] == 1.0
    assert (result["n_windows"], result["n_angry_windows"], result["n_gated"]) == (15, 6, 4)
    assert (result["n_utterances"], result["n_clips"]) == (7, 9)
    assert [t["target_fpr"] for t in result["thresholds"]] == [0.01, 0.05, 0.10]
    assert all(t["fpr"] == 0.0 and t["tpr"] == 1.0 for t in result["thresholds"])
    assert result["compare"]["p_value"] == 1.0 and result["compare"]["auroc"] == 1.0
    assert plot.stat().st_size > 10_000


def test_egemaps_baseline(tmp_path: Path, peak_model: Path) -> None:
    """Train on speaker 01 (RAVDESS train split), test on speaker 21 (test split); the second run is cached."""
    rng = np.random.default_rng(1)
    rows = [(f"noise{i}.flac", 1, (0.2 * rng.normal(size=2 * SR)).clip(-1, 1), SR) for i in range(4)]
    rows += [(f"tone{i}.flac", 0, _tone(2.0, freq=200.0 + 100 * i, amp=0.05), SR) for i in range(4)]
    manifest = _write_manifest(tmp_path, rows, corpus="ravdess", speakers="01 21")
    out, cache = tmp_path / "out.json", tmp_path / "cache"
    args = ["--manifest", str(manifest), "--json", str(out), "--cache", str(cache), "--model", str(peak_model)]
    egemaps.main(args)
    result = json.loads(out.read_text())
    assert (result["train"]["n_windows"], result["n_windows"], result["auroc"]) == (8, 8, 1.0)
    assert result["models"][str(peak_model)]["compare"]["auroc"] == 1.0  # the baseline, on the same windows
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert sorted(stamps) == ["ravdess-test-16k.npz", "ravdess-train-16k.npz"]
    egemaps.main(args)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert json.loads(out.read_text())["auroc"] == 1.0


def test_bad_manifest(tmp_path: Path, peak_model: Path) -> None:
    (tmp_path / "manifest.csv").write_text("path,corpus,speaker\na.flac,emodb,03\n")
    args = ["--model", str(peak_model), "--manifest", str(tmp_path / "manifest.csv"), "--json", "unused.json"]
    with pytest.raises(SystemExit, match="error: manifest .* has no column 'anger'"):
        auroc.main(args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--manifest", "nowhere/manifest.csv"], "error: manifest not found: nowhere/manifest.csv"),
        (["--split", "train"], "error: no clips in split 'train'"),
        (["--model", "nowhere.onnx"], "error: model file not found: nowhere.onnx"),
    ],
)
def test_bad_input(synth_manifest: Path, peak_model: Path, args: list[str], message: str) -> None:
    base = {"--model": str(peak_model), "--manifest": str(synth_manifest), "--json": "unused.json"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    with pytest.raises(SystemExit, match=message):
        auroc.main([item for pair in base.items() for item in pair])


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")
def test_mulaw_encoder_matches_sox(tmp_path: Path) -> None:
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    sf.write(tmp_path / "all.wav", pcm, 8000, subtype="PCM_16")
    cmd = ["sox", "-D", str(tmp_path / "all.wav"), "-t", "raw", "-e", "mu-law", "-b", "8", "-"]
    assert subprocess.run(cmd, capture_output=True, check=True).stdout == mulaw_encode(pcm / 32768.0)


def test_telephone_channel_is_narrowband() -> None:
    low, high = _tone(1.0, freq=1000.0, amp=0.3), _tone(1.0, freq=6000.0, amp=0.3)
    out_low, out_high = telephone(low), telephone(high)
    assert out_low.shape == low.shape and out_low.dtype == np.float32
    middle = slice(1000, -1000)  # away from the resampling filters' edges
    snr = 10 * np.log10(np.sum(low[middle] ** 2) / np.sum((out_low - low)[middle] ** 2))
    assert 30 < snr < 60  # mu-law quantisation noise of a loud tone
    assert np.sqrt(np.mean(out_high[middle] ** 2)) < 1e-3 * 0.3  # 6 kHz is above the 4 kHz band edge


@pytest.mark.shared
@pytest.mark.skipif(not (SHARED / "data" / "emodb").is_dir(), reason=f"needs the EmoDB copy in {SHARED}/data")
def test_shipped_model_on_real_clips(tmp_path: Path) -> None:
    """Four EmoDB clips (2 s each: two windows), two angry, through the telephone channel."""
    names = ["03a01Wa.flac", "03a01Nc.flac", "08a01Wa.flac", "08a01Na.flac"]
    rows = [{"path": str(SHARED / "data" / "emodb" / n), "anger": int(n[5] == "W")} for n in names]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["path", "corpus", "speaker", "anger", "duration_s"])
        writer.writeheader()
        writer.writerows([{**r, "corpus": "emodb", "speaker": r["path"][-12:-10], "duration_s": 2.0} for r in rows])
    out = tmp_path / "out.json"
    auroc.main(["--model", str(MODEL), "--manifest", str(manifest), "--json", str(out), "--telephone"])
    result = json.loads(out.read_text())
    assert (result["n_windows"], result["n_utterances"], result["channel"]) == (8, 4, "8 kHz G.711 mu-law")
    assert 0.0 <= result["auroc"] <= 1.0
