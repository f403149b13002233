"""tools.evaluate.robustness on a tiny synthetic corpus: end to end, cached, deterministic, as computed directly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from anger_stream import audio, metrics
from anger_stream.model import AngerModel
from tools import channels
from tools.evaluate import egemaps, robustness
from tools.evaluate.scoring import gated_segments, load_audio, load_clips

SR = 16_000
MODEL = Path(__file__).resolve().parents[1] / "models" / "anger_fcn.onnx"


def _clip(angry: bool, seed: int, sign: float) -> np.ndarray:
    """Angry: loud noise bursts (high crest after normalisation); other: a soft tone. `sign` offsets every
    sample so that a speaker's audio can be recognised in another speaker's babble."""
    rng = np.random.default_rng(seed)
    n = int(SR * rng.uniform(1.8, 2.6))
    t = np.arange(n) / SR
    x = 0.2 * rng.normal(size=n) if angry else 0.05 * np.sin(2 * np.pi * rng.uniform(150, 300) * t)
    return np.clip(np.abs(x) * sign + sign * 0.01, -1, 1).astype(np.float32)


def _manifest(folder: Path, corpus: str, speakers: dict[str, float]) -> Path:
    """Two angry and two other clips per speaker; each speaker's samples all have the sign given."""
    folder.mkdir()
    with (folder / "manifest.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "corpus", "speaker", "gender", "emotion", "anger", "duration_s"])
        for s, (speaker, sign) in enumerate(speakers.items()):
            for i in range(4):
                x = _clip(i % 2 == 1, 100 * s + i, sign)
                name = f"{speaker}_{i}.flac"
                sf.write(folder / name, x, SR, subtype="PCM_16")
                writer.writerow([name, corpus, speaker, "f", "angry" if i % 2 else "neutral", i % 2, len(x) / SR])
    return folder / "manifest.csv"


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """RAVDESS-like (actor 01 train, 21 and 22 test) and a test-only corpus with string speaker ids."""
    root = tmp_path_factory.mktemp("corpora")
    return [
        _manifest(root / "ravdess", "ravdess", {"01": 1.0, "21": 1.0, "22": -1.0}),
        _manifest(root / "mine", "mine", {"ann": -1.0, "bob": 1.0}),
    ]


@pytest.fixture(scope="module")
def network_run(manifests: list[Path], peak_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """All channels, the shipped model and the hand-made one, no baseline; run twice on one cache."""
    out = tmp_path_factory.mktemp("out")
    args = ["--model", str(MODEL), "--model", str(peak_model), "--egemaps", "none", "--cache", str(out / "cache")]
    args += [a for m in manifests for a in ("--manifest", str(m))]
    first = [*args, "--json", str(out / "a.json"), "--markdown", str(out / "a.md"), "--figure", str(out / "a.png")]
    robustness.main(first)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")}
    robustness.main([*args, "--json", str(out / "b.json")])
    return {
        "out": out,
        "first": json.loads((out / "a.json").read_text()),
        "second": json.loads((out / "b.json").read_text()),
        "stamps": stamps,
        "stamps_after": {p: p.stat().st_mtime_ns for p in (out / "cache").rglob("*.npz")},
    }


def test_every_channel_and_set_is_reported(network_run: dict, peak_model: Path) -> None:
    result = network_run["first"]
    assert result["channels"] == list(result["fingerprints"]) == list(channels.SUITE_NAMES)
    assert len(set(result["fingerprints"].values())) == len(channels.SUITE_NAMES)
    assert list(result["results"]) == ["ravdess", "mine", "all"]
    for by_channel in result["results"].values():
        assert list(by_channel) == list(channels.SUITE_NAMES)
        for entry in by_channel.values():
            assert set(entry["models"]) == {str(MODEL), str(peak_model)} and entry["egemaps"] == {}
    shipped = result["results"]["ravdess"]["clean"]["models"][str(MODEL)]
    assert shipped["delta_auroc"] == 0.0
    assert list(shipped["at_thresholds"]) == ["0.01", "0.05", "0.10"]  # the shipped model's metadata
    assert result["results"]["ravdess"]["clean"]["models"][str(peak_model)]["at_thresholds"] == {}
    assert "clean" in (network_run["out"] / "a.md").read_text()
    assert (network_run["out"] / "a.png").stat().st_size > 20_000


def test_cached_rerun_is_identical(network_run: dict) -> None:
    assert network_run["stamps"] and network_run["stamps_after"] == network_run["stamps"]
    assert network_run["second"]["results"] == network_run["first"]["results"]


def test_fresh_cache_gives_the_same_numbers(network_run: dict, manifests: list[Path], tmp_path: Path) -> None:
    """Determinism across runs: the same seeds and babble draws from scratch (three channels, two random)."""
    names = [n for n in channels.SUITE_NAMES if n in ("clean", "babble 5 dB", "room RT60 0.8 s")]
    args = ["--model", str(MODEL), "--egemaps", "none", "--cache", str(tmp_path), "--json", str(tmp_path / "c.json")]
    args += [a for m in manifests for a in ("--manifest", str(m))] + [a for n in names for a in ("--channel", n)]
    robustness.main(args)
    fresh = json.loads((tmp_path / "c.json").read_text())["results"]
    for corpus, by_channel in fresh.items():
        assert list(by_channel) == names
        for name, entry in by_channel.items():
            before = network_run["first"]["results"][corpus][name]
            assert entry["models"][str(MODEL)] == before["models"][str(MODEL)]
            assert (entry["n_windows"], entry["n_gated"]) == (before["n_windows"], before["n_gated"])


def _direct(
    name: str, test_set: robustness.TestSet, babble: robustness.Babble
) -> tuple[list[np.ndarray], np.ndarray, int]:
    """(raw segments, labels, gated count) of a set's clips through a channel, cut and gated by the runtime."""
    segments, y, gated = [], [], 0
    for clip in test_set.clips:
        pool = babble.pool(f"{test_set.name}/{clip.speaker}") if name in channels.NEEDS_POOL else None
        x = channels.suite_channel(name, load_audio(clip.path), robustness.clip_seed(test_set.key(clip)), pool)
        kept, n_gated = gated_segments(x)
        segments += kept
        y += [clip.anger] * len(kept)
        gated += n_gated
    return segments, np.array(y), gated


def test_numbers_equal_a_direct_computation(network_run: dict, manifests: list[Path], peak_model: Path) -> None:
    """Each clip through the channel, cut and gated by the runtime's functions, scored by onnxruntime."""
    sets = robustness.load_sets(manifests)
    babble = robustness.Babble(sets)
    models = {str(MODEL): AngerModel(MODEL), str(peak_model): AngerModel(peak_model)}
    for name in ("clean", "bright (pre-emphasis 0.9)", "babble 10 dB", "speech at -30 dBFS"):
        pooled_y, pooled_p = [], {m: [] for m in models}
        for test_set in sets:
            segments, y, gated = _direct(name, test_set, babble)
            reported = network_run["first"]["results"][test_set.name][name]
            assert (reported["n_windows"], reported["n_angry_windows"], reported["n_gated"]) == (len(y), y.sum(), gated)
            pooled_y.append(y)
            for path, model in models.items():
                p = model.predict(np.stack([audio.prepare_window(s, 19_200) for s in segments]))
                pooled_p[path].append(p)
                r = reported["models"][path]
                assert r["auroc"] == pytest.approx(metrics.auroc(y, p), abs=1e-12)
                assert r["median_p_angry"] == pytest.approx(float(np.median(p[y == 1])), abs=1e-6)
                for key, t in model.meta_json("thresholds", {}).items():
                    assert (r["at_thresholds"][key]["fpr"], r["at_thresholds"][key]["tpr"]) == metrics.rates(y, p, t)
        for path in models:
            auc = metrics.auroc(np.concatenate(pooled_y), np.concatenate(pooled_p[path]))
            assert network_run["first"]["results"]["all"][name]["models"][path]["auroc"] == pytest.approx(auc)


def test_babble_is_other_speakers(manifests: list[Path]) -> None:
    """Speaker 21's samples are all positive, 22's negative: each one's pool holds only the other's speech."""
    babble = robustness.Babble(robustness.load_sets(manifests[:1]))
    assert (babble.pool("ravdess/21") < 0).all() and (babble.pool("ravdess/22") > 0).all()
    assert len(babble.pool("ravdess/21")) > 3 * SR
    (lone,) = robustness.load_sets(manifests[1:])
    lone.clips = [c for c in lone.clips if c.speaker == "ann"]
    with pytest.raises(ValueError, match="babble needs test clips of a speaker other than mine/ann"):
        robustness.Babble([lone]).pool("mine/ann")


def test_baseline_beside_the_network(manifests: list[Path], peak_model: Path, tmp_path: Path) -> None:
    """Both eGeMAPS variants, trained on the train split's clean windows, scored on the channel's windows
    (in one of the two channels: --egemaps-channel)."""
    names = ["speech at -30 dBFS"]
    args = ["--model", str(peak_model), "--cache", str(tmp_path / "c"), "--egemaps-cache", str(tmp_path / "e")]
    args += ["--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"), "--channel", "clean"]
    args += [a for m in manifests for a in ("--manifest", str(m))] + [
        "--channel",
        names[0],
        "--egemaps-channel",
        names[0],
    ]
    robustness.main(args)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["results"]["mine"]["clean"]["egemaps"] == {}
    assert result["results"]["mine"][names[0]]["egemaps"]["raw"]["delta_auroc"] is None
    assert list(result["baselines"]) == ["normalised", "raw"] and result["main_baseline"] == "normalised"
    train = load_clips([manifests[0]], "train")
    n_train = sum(len(gated_segments(load_audio(c.path))[0]) for c in train)
    assert result["baselines"]["raw"]["train"] == {"n_windows": n_train, "corpora": ["ravdess"]}
    sets = robustness.load_sets(manifests)
    babble = robustness.Babble(sets)
    for variant, level in robustness.BASELINES.items():
        train_windows, train_x, _ = egemaps.cached_features(manifests[0], "train", False, level, tmp_path / "e")
        fitted = egemaps.fit(train_x, train_windows.labels)
        for name in names:
            for test_set in sets:
                segments, y, _ = _direct(name, test_set, babble)
                b = fitted.predict_proba(egemaps.segment_features(segments, level)[0])[:, 1]
                net = AngerModel(peak_model).predict(np.stack([audio.prepare_window(s, 19_200) for s in segments]))
                reported = result["results"][test_set.name][name]
                assert reported["egemaps"][variant]["auroc"] == pytest.approx(metrics.auroc(y, b))
                p = metrics.delong_test(y, net, b)[2]
                assert reported["models"][str(peak_model)]["p_vs_egemaps"][variant] == pytest.approx(p)
    assert "/ eGeMAPS normalised;" in (tmp_path / "r.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nowhere.onnx"], "error: model file not found: nowhere.onnx"),
        (["--manifest", "nowhere/manifest.csv"], "error: manifest not found: nowhere/manifest.csv"),
    ],
)
def test_bad_input(manifests: list[Path], peak_model: Path, tmp_path: Path, args: list[str], message: str) -> None:
    base = ["--model", str(peak_model), "--manifest", str(manifests[1]), "--json", str(tmp_path / "x.json")]
    base += ["--egemaps", "none", "--channel", "clean", "--cache", str(tmp_path)]
    with pytest.raises(SystemExit, match=message):
        robustness.main(base + args)
