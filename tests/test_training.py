"""Training data and loop: crops, augmentation, balanced batches, thresholds, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from anger_stream import audio
from tools.manifest import Clip
from tools.train import prosody
from tools.train.data import WINDOW, BalancedBatches, Track, augment_pair, crop_starts, fill_zeros
from tools.train.fcn import AngerProbability, build, drop_extra_outputs, logit
from tools.train.teacher import CLASSES as TEACHER_CLASSES
from tools.train.teacher import Teacher
from tools.train.train import main, platt, target_projection, thresholds
from tools.train.window_cues import speech_share

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def speech_like(rng: np.random.Generator, seconds: float = 3.0, lead: float = 1.0) -> np.ndarray:
    """Digital silence for `lead` s, then noise bursts at -20 dBFS: a stand-in for a padded recording."""
    x = np.zeros(int(seconds * audio.SAMPLE_RATE), dtype=np.float32)
    start = int(lead * audio.SAMPLE_RATE)
    x[start:] = 0.1 * rng.normal(size=len(x) - start).astype(np.float32)
    return x


def test_crops_avoid_digital_silence() -> None:
    x = speech_like(np.random.default_rng(0), seconds=3.0, lead=1.0)
    starts = crop_starts(x)
    assert len(starts) > 0
    for s in starts:
        window = x[s : s + WINDOW]
        assert audio.dbfs(window) >= audio.MIN_DBFS
        assert np.mean(window != 0) >= 0.6


def test_min_active_admits_edge_crops_that_pass_the_gate() -> None:
    x = speech_like(np.random.default_rng(4), seconds=3.0, lead=1.0)
    strict, loose = crop_starts(x), crop_starts(x, min_active=0.25)
    assert set(strict) < set(loose)
    shares = [np.mean(x[s : s + WINDOW] != 0) for s in loose]
    assert min(shares) < 0.6 and min(shares) >= 0.25 - 0.01
    assert all(audio.dbfs(x[s : s + WINDOW]) >= audio.MIN_DBFS for s in loose)


def test_fill_zeros_replaces_only_digital_zeros() -> None:
    rng = np.random.default_rng(5)
    x = speech_like(rng, seconds=2.0, lead=0.5)
    x[8000 + np.arange(0, 4000, 7)] = 0.0  # isolated zeros inside the speech part
    zero = x == 0
    y = fill_zeros(x, rng)
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(y[~zero], x[~zero])
    assert np.all(y[zero] != 0)
    rms = np.sqrt(np.mean(np.square(x[~zero])))
    level = 20 * np.log10(np.sqrt(np.mean(np.square(y[zero]))) / rms)
    assert -72 < level < -48
    assert np.array_equal(fill_zeros(np.zeros(10, np.float32), rng), np.zeros(10, np.float32))
    assert np.all(x[zero] == 0)  # input untouched


def test_augmentation_with_zero_noise_has_no_digital_zeros() -> None:
    rng = np.random.default_rng(6)
    x = speech_like(rng, seconds=3.0, lead=1.0)
    for start in crop_starts(x, min_active=0.25)[:3]:
        y = augment_pair(x, int(start), rng, zero_noise=True)[0]
        assert y.shape == (WINDOW,) and y.dtype == np.float32 and np.isfinite(y).all()
        assert np.all(y != 0)


def test_speech_share_counts_padding_and_quiet_frames_as_inactive() -> None:
    x = speech_like(np.random.default_rng(7), seconds=1.2, lead=0.3)  # 0.3 s zeros, 0.9 s noise
    assert speech_share(x) == pytest.approx(0.75)
    assert speech_share(x[: WINDOW // 2]) == pytest.approx(0.25)  # zero-padded to the window
    y = x.copy()
    y[:4800] = 1e-4 * np.random.default_rng(8).normal(size=4800)  # -80 dB re the speech: inactive
    assert speech_share(y) == pytest.approx(0.75)


def test_augmentation_keeps_length_and_dtype() -> None:
    rng = np.random.default_rng(1)
    x = speech_like(rng, lead=0.0)
    for _ in range(5):
        y = augment_pair(x, int(rng.integers(0, len(x) - WINDOW)), rng)[0]
        assert y.shape == (WINDOW,) and y.dtype == np.float32 and np.isfinite(y).all()


def test_balanced_batches_are_5_and_5() -> None:
    rng = np.random.default_rng(2)
    tracks = [
        Track(Clip(Path(f"{corpus}{i}"), corpus, "01", int(i % 3 == 0), 3.0), x, crop_starts(x))
        for corpus in ("a", "b")
        for i in range(9)
        for x in [speech_like(rng, lead=0.0)]
    ]
    batches = iter(BalancedBatches(tracks, seed=0, augment=False))
    for _ in range(4):
        x, y = next(batches)
        assert x.shape == (10, WINDOW) and x.dtype == torch.float32
        assert y.tolist() == [0] * 5 + [1] * 5


def test_thresholds_meet_target_false_positive_rate() -> None:
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(1000), np.ones(100)]
    p = np.r_[rng.uniform(size=1000), rng.uniform(0.5, 1, size=100)].astype(np.float32)
    for fpr, t in thresholds(y, p).items():
        assert np.mean(p[y == 0] >= t) <= float(fpr)
        assert np.mean(p[y == 0] >= np.nextafter(t, np.float32(0), dtype=np.float32)) > float(fpr) - 0.002


def small_ravdess_manifest(tmp_path: Path, other: str) -> Path:
    """A manifest of every 4th angry or `other` clip of RAVDESS actors 01, 17 and 21 (train, val, test)."""
    ravdess = SHARED / "data" / "ravdess"
    if not (ravdess / "manifest.csv").is_file():
        pytest.skip(f"RAVDESS not found under {SHARED} (set ANGER_SHARED)")
    with (ravdess / "manifest.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["speaker"] in ("01", "17", "21") and r["emotion"] in ("angry", other)]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(ravdess / r["path"])} for r in rows[::4])
    return manifest


@pytest.mark.shared
def test_training_smoke(tmp_path: Path) -> None:
    manifest = small_ravdess_manifest(tmp_path, "happy")
    out = tmp_path / "run"
    metrics = main(
        ["--manifest", str(manifest), "--variant", "S", "--steps", "4", "--eval-every", "2"]
        + ["--workers", "0", "--out", str(out)]
    )
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert set(metrics["final"]) == {"val", "test"}
    assert json.loads((out / "metrics.json").read_text())["best_step"] in (2, 4)
    assert (out / "best.pt").is_file() and (out / "history.csv").is_file()


def test_channel_augmentation_keeps_length_dtype_and_is_seeded() -> None:
    x = speech_like(np.random.default_rng(9), lead=0.0)
    pool = speech_like(np.random.default_rng(10), seconds=6.0, lead=0.0)
    runs = [[augment_pair(x, 4000, np.random.default_rng(s), True, 1.0, pool) for s in range(6)] for _ in range(2)]
    for (heard, clean), (heard2, clean2) in zip(*runs, strict=True):
        assert heard.shape == clean.shape == (WINDOW,) and heard.dtype == clean.dtype == np.float32
        assert np.isfinite(heard).all() and np.array_equal(heard, heard2) and np.array_equal(clean, clean2)
    assert not np.array_equal(runs[0][0][0], runs[0][1][0])  # another seed, another draw
    assert any(not np.allclose(heard, clean, atol=0.01) for heard, clean in runs[0])  # the channel acts


def test_extra_outputs_train_beside_the_classes_and_are_dropped_at_export() -> None:
    torch.manual_seed(0)
    model = build("S", extra=3).eval()
    x = torch.randn(2, WINDOW)
    assert model(x).shape[1] == 5
    slim = drop_extra_outputs(model).eval()
    assert slim.convs[-1].out_channels == 2
    assert torch.allclose(slim(x), model(x)[:, :2], atol=1e-6)
    assert torch.allclose(AngerProbability(slim)(x), AngerProbability(model)(x), atol=1e-6)


def test_calibration_is_a_monotone_map_of_p() -> None:
    torch.manual_seed(1)
    model = build("S").eval()
    x = torch.randn(8, WINDOW)
    p, q = AngerProbability(model)(x), AngerProbability(model, [2.0, -0.5])(x)
    assert torch.equal(torch.argsort(p), torch.argsort(q))
    assert torch.allclose(q, torch.sigmoid(2.0 * logit(p) - 0.5), atol=1e-6)
    y = np.r_[np.zeros(50), np.ones(50)]
    scale, bias = platt(y, np.r_[np.full(50, 0.3), np.full(50, 0.6)].astype(np.float32))
    assert scale > 0


def test_teacher_gives_raised_voice_logits_and_embedding() -> None:
    yamnet = SHARED / "pretrained" / "yamnet" / "yamnet.tflite"
    if not yamnet.is_file():
        pytest.skip(f"YAMNet not found under {SHARED} (set ANGER_SHARED)")
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (the train extra)")
    x = audio.prepare_window(speech_like(np.random.default_rng(11), seconds=1.2, lead=0.0), WINDOW)
    logits = Teacher(yamnet).targets(x)
    assert logits.shape == (len(TEACHER_CLASSES),) and logits.dtype == np.float32 and np.isfinite(logits).all()
    assert np.array_equal(logits, Teacher(yamnet).targets(x))
    teacher = Teacher(yamnet, embedding=True)
    both = teacher.targets(x)
    assert both.shape == (teacher.size,) == (len(TEACHER_CLASSES) + 1024,) and np.isfinite(both).all()
    assert np.allclose(both[: len(TEACHER_CLASSES)], logits, atol=1e-5)
    assert both[len(TEACHER_CLASSES) :].std() > 0  # a real embedding, not zeros


def test_target_projection_z_scores_logits_and_whitens_embedding_components() -> None:
    yamnet = SHARED / "pretrained" / "yamnet" / "yamnet.tflite"
    if not yamnet.is_file():
        pytest.skip(f"YAMNet not found under {SHARED} (set ANGER_SHARED)")
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (the train extra)")
    rng = np.random.default_rng(12)
    tracks = [
        Track(Clip(Path(f"a{i}"), "a", "01", i % 2, 3.0), x, crop_starts(x))
        for i in range(6)
        for x in [speech_like(rng, lead=0.0) * rng.uniform(0.2, 2.0)]
    ]
    batches = BalancedBatches(tracks, seed=0, augment=False, teacher=Teacher(yamnet, embedding=True))
    mean, w = target_projection(batches, components=3, n=6)
    assert mean.shape == (len(TEACHER_CLASSES) + 1024,) and w.shape == (len(TEACHER_CLASSES) + 1024, 9)
    probe = BalancedBatches(tracks, seed=1000, teacher=batches.teacher)  # the projection's own probe
    t = torch.cat([b[2] for b, _ in zip(probe, range(6), strict=False)])
    z = (t - mean) @ w
    assert torch.allclose(z.mean(dim=0), torch.zeros(9), atol=1e-3)
    assert torch.allclose(z[:, len(TEACHER_CLASSES) :].std(dim=0), torch.ones(3), atol=1e-2)
    cov = torch.cov(z[:, len(TEACHER_CLASSES) :].T)
    assert torch.allclose(cov, torch.eye(3), atol=1e-2)  # decorrelated


@pytest.mark.shared
def test_teacher_run_gets_a_raised_voice_term_that_exports(tmp_path: Path) -> None:
    """A tiny teacher run, its raised-voice weight chosen by tools.train.voice, exported: the ONNX model carries the
    term and equals the checkpoint's torch network."""
    from anger_stream.model import AngerModel
    from tools.train import export, voice

    yamnet = SHARED / "pretrained" / "yamnet" / "yamnet.tflite"
    if not yamnet.is_file():
        pytest.skip(f"YAMNet not found under {SHARED} (set ANGER_SHARED)")
    pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert (the train extra)")
    manifest = small_ravdess_manifest(tmp_path, "calm")
    run = tmp_path / "run"
    main(
        ["--manifest", str(manifest), "--variant", "S", "--steps", "2", "--eval-every", "2", "--workers", "0"]
        + ["--teacher", str(yamnet), "--teacher-embedding", "2", "--out", str(run)]
    )
    metrics = voice.main(
        ["--checkpoint", str(run / "best.pt"), "--manifest", str(manifest), "--dev", str(manifest)]
        + ["--out", str(run / "voice.pt")]
    )
    assert [r["weight"] for r in metrics["voice"]["sweep"]] == list(voice.WEIGHTS)
    best = max(metrics["voice"]["sweep"], key=lambda r: r["objective"])
    assert metrics["voice"]["weight"] == best["weight"] and len(metrics["calibration"]) == 2
    net, _, term = export.load_checkpoint(run / "voice.pt")
    assert term is not None and term.weight == best["weight"] and net.convs[-1].out_channels == 2 + len(TEACHER_CLASSES)
    onnx_path = tmp_path / "voice.onnx"
    export.main(["--checkpoint", str(run / "voice.pt"), "--out", str(onnx_path)])
    model = AngerModel(onnx_path)
    assert model.meta_json("voice")["weight"] == best["weight"]
    x = audio.prepare_window(np.random.default_rng(8).normal(size=(3, WINDOW)), WINDOW)
    with torch.no_grad():
        expected = AngerProbability(net, metrics["calibration"], term)(torch.from_numpy(x)).numpy()
    assert np.abs(model.predict(x) - expected).max() <= 1e-5


def voiced_then_noise(f0: float = 150.0) -> np.ndarray:
    """1.5 s of a harmonic voice-like tone at f0, then 1.5 s of quiet noise."""
    t = np.arange(int(1.5 * audio.SAMPLE_RATE)) / audio.SAMPLE_RATE
    tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20)) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    noise = 0.01 * np.random.default_rng(5).normal(size=len(t))
    return (0.1 * np.r_[tone, noise]).astype(np.float32)


def test_prosodic_functionals_follow_pitch_shift_ignore_level_and_need_a_voice() -> None:
    pytest.importorskip("opensmile", reason="needs opensmile (the train extra)")
    x = voiced_then_noise()
    lld = prosody.descriptors(x)
    assert lld.shape == (pytest.approx(len(x) / prosody.HOP, abs=8), len(prosody.LLD))
    voiced = prosody.functionals(lld, 0, 19_200)
    names = dict(zip(prosody.FUNCTIONALS, voiced, strict=True))
    assert names["f0_mean"] == pytest.approx(12 * np.log2(150 / 27.5), abs=0.5)
    assert names["voiced_share"] > 0.8
    shifted = prosody.functionals(lld, 0, 19_200, semitones=2.0)
    assert shifted[0] == pytest.approx(voiced[0] + 2.0) and np.array_equal(shifted[1:], voiced[1:])
    assert np.allclose(prosody.functionals(prosody.descriptors(0.05 * x), 0, 19_200), voiced, rtol=1e-3, atol=1e-3)
    unvoiced = prosody.functionals(lld, 28_000, 19_200)  # noise only
    assert np.isnan(unvoiced[:3]).all() and np.isnan(unvoiced[5:12]).all()
    assert np.isfinite(unvoiced[[3, 4, 12]]).all() and unvoiced[12] < 0.2


def test_target_projection_z_scores_prosodic_functionals_without_their_gaps() -> None:
    pytest.importorskip("opensmile", reason="needs opensmile (the train extra)")
    rng = np.random.default_rng(13)
    tracks = []
    for i in range(6):
        x = np.roll(voiced_then_noise(110.0 + 20 * i), int(rng.integers(0, 16_000)))
        if i < 2:  # one clip of each class with no voice at all
            x = 0.1 * rng.normal(size=len(x)).astype(np.float32)
        tracks.append(Track(Clip(Path(f"a{i}"), "a", "01", i % 2, 3.0), x, crop_starts(x), prosody.descriptors(x)))
    batches = BalancedBatches(tracks, seed=0, augment=False)
    mean, w = target_projection(batches, components=0, n=8)
    assert w.shape == (len(prosody.FUNCTIONALS),) * 2
    probe = BalancedBatches(tracks, seed=1000)  # the projection's own probe
    t = torch.cat([b[2] for b, _ in zip(probe, range(8), strict=False)])
    assert torch.isnan(t).any()  # the crops with no voice
    missing = torch.isnan(t)
    z = (torch.where(missing, mean, t) - mean) @ w  # as the training loss takes it
    for column, gaps in zip(z.T, missing.T, strict=True):
        assert torch.isfinite(column).all() and (column[gaps] == 0).all()
        assert abs(float(column[~gaps].mean())) < 1e-3 and abs(float(column[~gaps].std()) - 1) < 1e-2


@pytest.mark.shared
def test_prosody_run_learns_functionals_that_are_dropped_at_export(tmp_path: Path) -> None:
    from tools.train import export

    pytest.importorskip("opensmile", reason="needs opensmile (the train extra)")
    run = tmp_path / "run"
    metrics = main(
        ["--manifest", str(small_ravdess_manifest(tmp_path, "calm")), "--variant", "S", "--steps", "4"]
        + ["--eval-every", "2", "--workers", "0", "--prosody", "--out", str(run)]
    )
    assert metrics["prosody"]["functionals"] == list(prosody.FUNCTIONALS)
    assert all(np.isfinite(row["prosody_loss"]) and row["prosody_loss"] > 0 for row in metrics["history"])
    net, _, term = export.load_checkpoint(run / "best.pt")
    assert term is None and net.convs[-1].out_channels == 2
