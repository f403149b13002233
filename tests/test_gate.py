"""The YAMNet gate study (tools.evaluate.gate): its rules on small arrays, and the tool on a few real clips."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tools.evaluate import gate

FUSION = {"alpha": 0.25, "scale": 0.9396, "bias": -0.0169}


def table(level: list[float], speaker: list[str], clip: list[int] | None = None) -> gate.Table:
    n = len(level)
    rng = np.random.default_rng(1)
    return gate.Table(
        corpus=np.array([s.split("/")[0] for s in speaker]),
        speaker=np.array(speaker),
        clip=np.array(clip if clip is not None else range(n)),
        label=np.arange(n) % 2,
        level=np.array(level, dtype=float),
        voicing=np.linspace(0.0, 1.0, n),
        p_fast=rng.uniform(0.01, 0.99, n),
        p_full=rng.uniform(0.01, 0.99, n),
    )


def test_level_is_measured_against_each_speakers_own_baseline() -> None:
    t = table([-30, -20, -10, -50, -40, -30], ["a/1"] * 3 + ["a/2"] * 3)
    assert gate.speaker_median(t.level, t.speaker).tolist() == [-20] * 3 + [-40] * 3
    run = gate.rules(t)
    assert run["level >= baseline +0 dB"].tolist() == [False, True, True, False, True, True]
    assert run["level >= baseline +6 dB"].tolist() == [False, False, True, False, False, True]
    assert run["level >= baseline -6 dB"].tolist() == [False, True, True, False, True, True]  # 10 dB under
    assert run["full (every window)"].all() and not run["fast (no window)"].any()


def test_causal_baseline_is_the_median_of_the_speakers_windows_so_far() -> None:
    level = np.array([-10.0, -30.0, -20.0, -40.0, 0.0])
    speaker = np.array(["a/1", "a/1", "a/2", "a/1", "a/2"])
    baseline = gate.running_median(level, speaker, np.array([1, 0, 2, 3, 4]))
    assert baseline.tolist() == [-20.0, -30.0, -20.0, -30.0, -10.0]


def test_clip_order_shuffles_clips_but_keeps_each_clips_windows_in_time_order() -> None:
    clip = np.repeat(np.arange(6), 3)
    order = gate.clip_order(clip, seed=3)
    assert sorted(order) == list(range(18))
    assert (clip[order].reshape(6, 3) == clip[order][::3, None]).all()  # clips stay whole
    assert (np.diff(order.reshape(6, 3), axis=1) == 1).all()  # in time order
    assert list(clip[order][::3]) != list(range(6))  # shuffled
    assert (gate.clip_order(clip, seed=3) == order).all()


def test_head_is_recovered_and_a_gated_out_window_gets_h0() -> None:
    rng = np.random.default_rng(0)
    p_fast, h = rng.uniform(0.001, 0.999, 50), rng.normal(0, 2, 50)
    p_full = 1 / (1 + np.exp(-(FUSION["scale"] * (gate.logit(p_fast) + FUSION["alpha"] * h) + FUSION["bias"])))
    assert np.allclose(gate.head(p_fast, p_full, FUSION), h)
    run = np.arange(50) % 3 == 0
    p = gate.gated_p(p_fast, h, run, -1.5, FUSION)
    assert np.allclose(p[run], p_full[run])
    expected = 1 / (1 + np.exp(-(FUSION["scale"] * (gate.logit(p_fast) - 0.25 * 1.5) + FUSION["bias"])))
    assert np.allclose(p[~run], expected[~run])


def test_top_fraction_and_voicing_rules() -> None:
    t = table(list(range(8)), ["a/1"] * 8)
    run = gate.rules(t)
    assert run["p_fcn in top 25%"].sum() == 2 and t.p_fast[run["p_fcn in top 25%"]].min() > np.median(t.p_fast)
    assert run["voicing >= 0.5"].tolist() == [False] * 4 + [True] * 4
    both = run["level >= baseline +0 dB and voicing >= 0.6"]
    assert both.tolist() == [False] * 5 + [True] * 3


def test_voicing_tells_a_voiced_tone_from_noise_and_silence() -> None:
    t = np.arange(19_200) / 16_000
    tone = np.sign(np.sin(2 * np.pi * 140 * t)) * 0.1  # a buzz: periodic, rich in harmonics
    noise = np.random.default_rng(0).normal(0, 0.1, 19_200)
    assert gate.voicing(tone) > 0.9
    assert gate.voicing(noise) < 0.4
    assert 0.0 <= gate.voicing(np.zeros(16_000)) < 0.1


def write_manifest(path: Path, data: Path, corpus: str, picks: dict[str, int]) -> Path:
    """A manifest of a few clips of a corpus (absolute paths): `picks` angry and calm clips per speaker."""
    rows = list(csv.DictReader((data / corpus / "manifest.csv").open()))
    chosen = [
        r
        for speaker, n in picks.items()
        for anger in ("1", "0")
        for r in [r for r in rows if r["speaker"] == speaker and r["anger"] == anger][:n]
    ]
    for r in chosen:
        r["path"] = str(data / corpus / r["path"])
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return path


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.evaluate.gate", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.shared
def test_gate_tool_end_to_end_on_a_few_clips(shared: Path, tmp_path: Path) -> None:
    data = shared / "data"
    ravdess = write_manifest(tmp_path / "ravdess.csv", data, "ravdess", {"22": 2, "18": 2})  # test, validation
    emodb = write_manifest(tmp_path / "emodb.csv", data, "emodb", {"03": 2})
    out, cache = tmp_path / "gate.json", tmp_path / "cache"
    args = ["--manifest", str(ravdess), "--dev", str(emodb), "--json", str(out), "--cache", str(cache)]
    first = run_tool(*args)
    assert first.returncode == 0, first.stderr
    assert len(list(cache.glob("*.npz"))) == 4  # test and validation, clean and telephone
    result = json.loads(out.read_text())
    rules = {r["rule"]: r for r in result["rules"]}
    assert result["pooled"] == ["ravdess"] and result["n_windows"]["clean"] > 10
    for channel in gate.CHANNELS:
        full, fast = rules["full (every window)"][channel], rules["fast (no window)"][channel]
        assert full["yamnet_fraction"] == 1.0 and fast["yamnet_fraction"] == 0.0
        assert all(abs(d) < 1e-9 for d in full["minus_full"].values())
        assert all(abs(d) < 1e-9 for d in fast["minus_fast"].values())
        assert set(full["auroc"]) == {"ravdess", "emodb", "pooled"}
    assert rules["full (every window)"]["within_tolerance"]
    assert [r["rule"] for r in result["validation_rules"]] == list(rules)

    again = run_tool(*args)
    assert again.returncode == 0 and "measured" not in again.stderr  # the tables come from the cache
    rerun = json.loads(out.read_text())
    assert rerun["rules"] == result["rules"]


def test_gate_tool_refuses_a_missing_manifest_in_one_line(tmp_path: Path) -> None:
    result = run_tool("--manifest", str(tmp_path / "none.csv"), "--json", str(tmp_path / "out.json"))
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"error: manifest not found: {tmp_path / 'none.csv'}"]
