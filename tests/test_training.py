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
from tools.data import WINDOW, BalancedBatches, Track, augment, crop_starts
from tools.manifest import Clip
from tools.train import main, thresholds

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


def test_augmentation_keeps_length_and_dtype() -> None:
    rng = np.random.default_rng(1)
    x = speech_like(rng, lead=0.0)
    for _ in range(5):
        y = augment(x, int(rng.integers(0, len(x) - WINDOW)), rng)
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


@pytest.mark.shared
def test_training_smoke(tmp_path: Path) -> None:
    ravdess = SHARED / "data" / "ravdess"
    if not (ravdess / "manifest.csv").is_file():
        pytest.skip(f"RAVDESS not found under {SHARED} (set ANGER_SHARED)")
    with (ravdess / "manifest.csv").open(newline="") as f:
        rows = [
            r for r in csv.DictReader(f) if r["speaker"] in ("01", "17", "21") and r["emotion"] in ("angry", "happy")
        ]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "path": str(ravdess / r["path"])} for r in rows[::4])
    out = tmp_path / "run"
    metrics = main(
        ["--manifest", str(manifest), "--variant", "S", "--steps", "4", "--eval-every", "2"]
        + ["--workers", "0", "--out", str(out)]
    )
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert set(metrics["final"]) == {"val", "test"}
    assert json.loads((out / "metrics.json").read_text())["best_step"] in (2, 4)
    assert (out / "best.pt").is_file() and (out / "history.csv").is_file()
