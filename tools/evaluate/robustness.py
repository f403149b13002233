"""Channel robustness: the test speakers of every corpus through every channel of the suite (`tools.channels`).

    python -m tools.evaluate.robustness --model models/anger_fcn.onnx --manifest ../shared/data/ravdess/manifest.csv \
        --manifest ../shared/data/ased/manifest.csv --manifest ../shared/data/nemo/manifest.csv \
        --manifest ../shared/data/emodb/manifest.csv --json models/eval/robustness.json \
        [--markdown models/eval/robustness.md] [--figure models/figures/robustness.png] [--model other.onnx]

Each test clip (decoded at 16 kHz) goes through `channels.suite_channel(name, x, seed, babble)` with a seed
derived from its path, so every run hears the same perturbations; babble is drawn from other test speakers'
speech (never the clip's own speaker). The perturbed clips are cut, gated and prepared exactly as at run time
(`tools.evaluate`), scored by each model, and summarised per corpus and channel: window AUROC with a DeLong
95 % CI, its change from the clean channel, utterance AUROC, median p of angry and other windows, and the
false- and true-positive rates at the thresholds in each model's metadata. The eGeMAPS baseline
(`tools.evaluate.egemaps`: functionals + logistic regression, trained on the clean windows of the manifests' train
splits) is scored on the same windows, on level-normalised windows (the main comparison: the network never
sees level) and on raw windows, with DeLong's test of each model against it.

Perturbed audio, eGeMAPS features and each model's scores (keyed by a hash of the model file) are cached per
channel under --cache; a channel's cache folder is named by a fingerprint of its output on a fixed probe
signal, so a changed channel definition is recomputed and an unchanged one is reused. With the caches, scoring
a new model takes a few minutes of one core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from anger_stream import audio, metrics
from anger_stream.model import AngerModel, ModelError
from tools import channels
from tools.evaluate import egemaps
from tools.evaluate.auroc import summarise, write_json
from tools.evaluate.scoring import WindowSet, iter_segments, join, load_audio, load_clips, score_segments
from tools.manifest import Clip

BASELINES = {"normalised": False, "raw": True}
"""eGeMAPS variants: name -> whether the features see the raw level (False: windows scaled to -20 dBFS)."""
MAIN_BASELINE = "normalised"
BABBLE_S = 120.0
"""Seconds of other speakers' speech in a clip's babble pool."""
BABBLE_TOP_DB = 40.0
"""Babble keeps the 10 ms frames of each clip within this many dB of its loudest (no silence or pauses)."""
CACHE_VERSION = 1
"""Part of every channel fingerprint: bump when the clip seeds change."""
BABBLE_VERSION = 2
"""Part of the babble channels' cache key: bump when the pools are drawn differently."""
ALL = "all"
"""The pooled set (every corpus together), reported after the corpora."""


@dataclass
class TestSet:
    """The test clips of one manifest, named by their corpus."""

    name: str
    root: Path
    clips: list[Clip]

    def key(self, clip: Clip) -> str:
        return f"{self.name}/{clip.path.relative_to(self.root).as_posix()}"


def load_sets(manifests: Sequence[Path]) -> list[TestSet]:
    """The test split of each manifest (all of a corpus that is never trained on)."""
    sets = []
    for manifest in manifests:
        clips = load_clips([manifest], "test")
        name = clips[0].corpus
        if name in {s.name for s in sets} or name == ALL:
            raise ValueError(f"corpus {name!r} appears twice in the manifests")
        sets.append(TestSet(name, manifest.parent, clips))
    return sets


def clip_seed(key: str) -> int:
    """The channel seed of a clip: a checksum of its corpus and path, the same on every run and machine."""
    return zlib.crc32(key.encode())


def active_speech(x: np.ndarray, frame: int = audio.SAMPLE_RATE // 100) -> np.ndarray:
    """The 10 ms frames of a clip within BABBLE_TOP_DB of its loudest frame, joined (no pauses or silence)."""
    n = len(x) // frame
    frames = x[: n * frame].reshape(n, frame)
    ms = np.mean(np.square(frames, dtype=np.float64), axis=1)
    if n == 0 or ms.max() == 0:
        return x[:0]
    return frames[ms >= ms.max() * 10 ** (-BABBLE_TOP_DB / 10)].reshape(-1)


class Babble:
    """Pools of other test speakers' speech: a clip's pool never holds its own speaker."""

    def __init__(self, sets: Sequence[TestSet]) -> None:
        self.sets = sets
        self.speakers: list[str] = []
        self.speech: list[np.ndarray] = []
        self._pools: dict[str, np.ndarray] = {}
        keys = [f"{BABBLE_VERSION} {BABBLE_S} {BABBLE_TOP_DB}"] + [s.key(c) for s in sets for c in s.clips]
        self.digest = hashlib.sha1("\n".join(keys).encode()).hexdigest()
        """Identifies the clips the pools are drawn from (part of the perturbed audio's cache key)."""

    def _load(self) -> None:
        for test_set in self.sets:
            for clip in test_set.clips:
                self.speakers.append(f"{test_set.name}/{clip.speaker}")
                self.speech.append(active_speech(load_audio(clip.path)))

    def pool(self, speaker: str) -> np.ndarray:
        """About BABBLE_S seconds of other speakers' clips, drawn with a seed from the speaker's name."""
        if not self.speakers:
            self._load()
        if speaker not in self._pools:
            others = [i for i, s in enumerate(self.speakers) if s != speaker and len(self.speech[i])]
            if not others:
                raise ValueError(f"babble needs test clips of a speaker other than {speaker}")
            order = np.random.default_rng(clip_seed(speaker)).permutation(others)
            lengths = np.cumsum([len(self.speech[i]) for i in order])
            take = order[: int(np.searchsorted(lengths, BABBLE_S * audio.SAMPLE_RATE)) + 1]
            self._pools = {speaker: np.concatenate([self.speech[i] for i in take]).astype(np.float32)}
        return self._pools[speaker]


def fingerprint(name: str) -> str:
    """A short hash of a channel's output on a fixed probe (a modulated tone in noise, a babble of noise)."""
    rng = np.random.default_rng(12345)
    t = np.arange(2 * audio.SAMPLE_RATE) / audio.SAMPLE_RATE
    probe = 0.2 * np.sin(2 * np.pi * 180 * t * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))) * (1 + np.sin(2 * np.pi * t))
    probe = (probe + 0.01 * rng.normal(size=t.size)).astype(np.float32)
    babble = (0.1 * rng.normal(size=8 * audio.SAMPLE_RATE)).astype(np.float32)
    out = np.ascontiguousarray(channels.suite_channel(name, probe, 7, babble), dtype=np.float32)
    return hashlib.sha1(out.tobytes() + f"{CACHE_VERSION}".encode()).hexdigest()[:10]


class ChannelCache:
    """Perturbed clips and eGeMAPS features of one channel, one file per corpus, written atomically."""

    def __init__(self, root: Path, name: str) -> None:
        self.name = name
        self.fingerprint = fingerprint(name)
        self.folder = root / f"{re.sub(r'[^A-Za-z0-9.]+', '-', name).strip('-')}-{self.fingerprint}"
        self.babble = name in channels.NEEDS_POOL

    def _save(self, path: Path, **arrays: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    def _babble_digest(self, babble: Babble) -> str:
        return babble.digest if self.babble else ""

    def audio(self, test_set: TestSet, babble: Babble) -> list[np.ndarray]:
        """The set's clips through the channel (computed once, then read from the cache)."""
        path = self.folder / f"{test_set.name}-audio.npz"
        keys = np.array([test_set.key(c) for c in test_set.clips])
        if path.is_file():
            saved = np.load(path)
            if np.array_equal(saved["keys"], keys) and str(saved["babble"]) == self._babble_digest(babble):
                return np.split(saved["samples"], saved["offsets"][1:-1])
        print(f"{self.name}: perturbing {test_set.name} ({len(keys)} clips)", file=sys.stderr)
        out = [
            np.asarray(
                channels.suite_channel(
                    self.name,
                    load_audio(c.path),
                    clip_seed(k),
                    babble.pool(f"{test_set.name}/{c.speaker}") if self.babble else None,
                ),
                dtype=np.float32,
            )
            for c, k in zip(test_set.clips, keys, strict=True)
        ]
        offsets = np.cumsum([0] + [len(x) for x in out])
        self._save(path, keys=keys, babble=self._babble_digest(babble), offsets=offsets, samples=np.concatenate(out))
        return out

    def features(self, test_set: TestSet, variant: str, segments: list[np.ndarray]) -> np.ndarray:
        """eGeMAPS features of the set's scored windows in this channel (computed once, then cached)."""
        path = self.folder / f"{test_set.name}-egemaps-{variant}.npz"
        if path.is_file():
            saved = np.load(path)
            if len(saved["features"]) == len(segments):
                return saved["features"]
        features, per_window = egemaps.segment_features(segments, BASELINES[variant])
        print(
            f"{self.name}: eGeMAPS {variant} of {test_set.name}, {len(segments)} windows, "
            f"{1000 * per_window:.1f} ms/window",
            file=sys.stderr,
        )
        self._save(path, features=features, seconds_per_window=per_window)
        return features

    def scores(self, test_set: TestSet, models: dict[str, AngerModel], segments: list[np.ndarray]) -> dict:
        """Each model's p for the set's scored windows in this channel, cached by the model file's hash."""
        digests = {k: hashlib.sha1(m.path.read_bytes()).hexdigest()[:12] for k, m in models.items()}
        paths = {k: self.folder / f"{test_set.name}-p-{d}.npz" for k, d in digests.items()}
        out = {}
        for k, path in paths.items():
            if path.is_file() and len(saved := np.load(path)["p"]) == len(segments):
                out[k] = saved
        missing = [k for k in models if k not in out]
        if missing:
            for k, p in zip(missing, score_segments([models[k] for k in missing], segments), strict=True):
                self._save(paths[k], p=p)
                out[k] = p
        return {k: out[k] for k in models}


def channel_windows(cache: ChannelCache, test_set: TestSet, babble: Babble) -> tuple[WindowSet, list[np.ndarray]]:
    """The run-time windows (raw segments) of a set's clips through a channel."""
    windows = WindowSet(test_set.clips)
    return windows, list(iter_segments(windows, cache.audio(test_set, babble)))


def fit_baselines(manifests: Sequence[Path], variants: Sequence[str], cache: Path) -> dict[str, tuple[Pipeline, dict]]:
    """eGeMAPS + logistic regression per variant, trained on the clean windows of the manifests' train splits;
    with a description of the training windows."""
    fitted = {}
    for variant in variants:
        parts = [
            egemaps.cached_features(m, "train", False, BASELINES[variant], cache)
            for m in manifests
            if egemaps.has_split(m, "train")
        ]
        if not parts:
            raise ValueError("no train split in the manifests for the eGeMAPS baseline")
        windows, x = egemaps.merge(parts)
        fitted[variant] = (
            egemaps.fit(x, windows.labels),
            {"n_windows": len(x), "corpora": sorted({c.corpus for c in windows.clips})},
        )
    return fitted


def describe(windows: WindowSet, scores: np.ndarray, thresholds: dict[str, float]) -> dict:
    """AUROC and utterance AUROC with CIs, median p per class, and FPR/TPR at the given thresholds."""
    y = windows.labels
    full = summarise(windows, scores)
    out = {k: full[k] for k in ("auroc", "auroc_ci95", "utterance_auroc", "utterance_auroc_ci95")}
    out["median_p_angry"] = float(np.median(scores[y == 1]))
    out["median_p_other"] = float(np.median(scores[y == 0]))
    out["at_thresholds"] = {
        name: dict(zip(("fpr", "tpr"), metrics.rates(y, scores, t), strict=True)) | {"threshold": t}
        for name, t in thresholds.items()
    }
    return out


def evaluate_set(
    windows: WindowSet,
    scores: dict[str, np.ndarray],
    baselines: dict[str, np.ndarray],
    thresholds: dict[str, dict[str, float]],
) -> dict:
    """One corpus in one channel: every model and baseline, and DeLong's test of each model vs each baseline."""
    y = windows.labels
    out: dict = {
        "n_clips": len(windows.clips),
        "n_windows": len(y),
        "n_angry_windows": int(y.sum()),
        "n_gated": windows.n_gated,
        "models": {},
        "egemaps": {name: describe(windows, s, {}) for name, s in baselines.items()},
    }
    for model, s in scores.items():
        result = describe(windows, s, thresholds[model])
        result["p_vs_egemaps"] = {name: metrics.delong_test(y, s, b)[2] for name, b in baselines.items()}
        out["models"][model] = result
    return out


Scored = tuple[WindowSet, dict[str, np.ndarray], dict[str, np.ndarray]]
"""A set's windows in one channel, each model's scores and each baseline's scores."""


def pooled(parts: Sequence[Scored]) -> Scored:
    """Windows and scores of several sets as one set."""
    merged = join([p[0] for p in parts])
    scores = {m: np.concatenate([p[1][m] for p in parts]) for m in parts[0][1]}
    baselines = {b: np.concatenate([p[2][b] for p in parts]) for b in parts[0][2]}
    return merged, scores, baselines


def add_deltas(results: dict) -> None:
    """delta_auroc: each AUROC minus the same set's clean-channel AUROC (None without a clean channel)."""
    for by_channel in results.values():
        clean = by_channel.get(channels.SUITE_NAMES[0])
        for entry in by_channel.values():
            for group in ("models", "egemaps"):
                for name, r in entry[group].items():
                    reference = None if clean is None else clean[group].get(name)
                    r["delta_auroc"] = None if reference is None else r["auroc"] - reference["auroc"]


def run(
    model_paths: Sequence[Path],
    manifests: Sequence[Path],
    names: Sequence[str],
    variants: Sequence[str],
    cache: Path,
    egemaps_cache: Path,
    baseline_names: Sequence[str] | None = None,
) -> dict:
    """Every set through every named channel, scored by the models and (in `baseline_names`, default all) the
    baselines: the `results` of the JSON."""
    models = {str(p): AngerModel(p) for p in model_paths}
    thresholds = {k: {t: float(v) for t, v in m.meta_json("thresholds", {}).items()} for k, m in models.items()}
    sets = load_sets(manifests)
    babble = Babble(sets)
    fitted = fit_baselines(manifests, variants, egemaps_cache) if variants else {}
    caches = [ChannelCache(cache, name) for name in names]
    with_baseline = set(names if baseline_names is None else baseline_names)
    for variant in variants:  # all features of the main variant first: they are the slow part
        for ch in caches:
            for test_set in sets if ch.name in with_baseline else ():
                ch.features(test_set, variant, channel_windows(ch, test_set, babble)[1])
    results: dict[str, dict[str, dict]] = {s.name: {} for s in sets} | {ALL: {}}
    for ch in caches:
        parts = []
        for test_set in sets:
            windows, segments = channel_windows(ch, test_set, babble)
            scores = ch.scores(test_set, models, segments)
            base = {
                v: fitted[v][0].predict_proba(ch.features(test_set, v, segments))[:, 1]
                for v in (variants if ch.name in with_baseline else ())
            }
            parts.append((windows, scores, base))
            results[test_set.name][ch.name] = evaluate_set(windows, scores, base, thresholds)
        if len(parts) > 1:
            results[ALL][ch.name] = evaluate_set(*pooled(parts), thresholds)
    if not results[ALL]:
        del results[ALL]
    add_deltas(results)
    return {
        "baselines": {
            v: {
                "features": "openSMILE eGeMAPSv02 functionals (88) of "
                + ("raw window audio" if BASELINES[v] else "windows scaled to -20 dBFS RMS"),
                "classifier": "StandardScaler + LogisticRegression(C=1)",
                "train": fitted[v][1],
            }
            for v in variants
        },
        "thresholds": thresholds,
        "fingerprints": {ch.name: ch.fingerprint for ch in caches},
        "results": results,
    }


TITLES = {"ravdess": "RAVDESS", "ased": "ASED", "nemo": "nEMO", "emodb": "EmoDB", ALL: "all pooled"}


def _title(name: str) -> str:
    return TITLES.get(name, name)


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.0e}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _bold(text: str, on: bool) -> str:
    return f"**{text}**" if on else text


def _auroc_cell(entry: dict, model: str, variant: str | None) -> str:
    """'network (change from clean) / baseline', the significantly better one (DeLong p < 0.05) in bold."""
    net = entry["models"][model]
    text = f"{net['auroc']:.3f}"
    delta = "" if net["delta_auroc"] is None else f" ({net['delta_auroc']:+.3f})"
    base = entry["egemaps"].get(variant) if variant else None
    if base is None:
        return text + delta
    significant = net["p_vs_egemaps"][variant] < 0.05
    better = net["auroc"] > base["auroc"]
    base_text = _bold(f"{base['auroc']:.3f}", significant and not better)
    return f"{_bold(text, significant and better)}{delta} / {base_text}"


def markdown(result: dict) -> str:
    """Tables for the model card, per model: window AUROC (change from clean) beside each eGeMAPS variant,
    and FPR / TPR at each metadata threshold."""
    results = result["results"]
    corpora = [s for s in results if s != ALL]
    names = list(next(iter(results.values())))
    lines = [f"Command: `{result['command']}`", ""]
    for model in result["models"]:
        for variant in result["baselines"] or [None]:
            title = f"### {model}: window AUROC (change from clean)"
            if variant:
                title += f" / eGeMAPS {variant}; bold: better by DeLong p < 0.05"
            rows = [[ch, *(_auroc_cell(results[s][ch], model, variant) for s in corpora)] for ch in names]
            lines += [title, "", *_table(["channel", *map(_title, corpora)], rows), ""]
        for key, t in result["thresholds"][model].items():
            lines += [f"### {model}: FPR / TPR at the metadata threshold for {key} FPR (p >= {t:.3f})", ""]
            rows = [
                [ch]
                + [
                    "{fpr:.1%} / {tpr:.1%}".format(**results[s][ch]["models"][model]["at_thresholds"][key])
                    for s in results
                ]
                for ch in names
            ]
            lines += _table(["channel", *map(_title, results)], rows) + [""]
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    """Per corpus and channel: window AUROC of each model and of the main baseline, and the FPR and TPR at each
    model's middle metadata threshold (5 % for the shipped model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = result["results"]
    corpora = [s for s in results if s != ALL]
    names = list(next(iter(results.values())))
    x = np.arange(len(names))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(max(8.0, 0.6 * len(names) + 3), 11), sharex=True)
    styles = [("-", "o"), (":", "s"), ("-.", "^"), ("--", "v")]
    for i, model in enumerate(result["models"]):
        line, marker = styles[i % len(styles)]
        keys = list(result["thresholds"][model])
        key = keys[len(keys) // 2] if keys else None
        for colour, s in zip(colours, corpora, strict=False):
            entries = [results[s][ch]["models"][model] for ch in names]
            label = f"{Path(model).stem}, {_title(s)}"
            top.plot(x, [e["auroc"] for e in entries], line, marker=marker, color=colour, label=label)
            if key is not None:
                for ax, rate in ((middle, "fpr"), (bottom, "tpr")):
                    ys = [100 * e["at_thresholds"][key][rate] for e in entries]
                    ax.plot(x, ys, line, marker=marker, color=colour, label=label)
        if key is not None and i == 0:
            middle.axhline(100 * float(key), color="grey", linewidth=1)
            middle.set_ylabel(f"FPR (%) at the {key} FPR threshold")
            bottom.set_ylabel(f"TPR (%) at the {key} FPR threshold")
    if MAIN_BASELINE in result["baselines"]:
        for colour, s in zip(colours, corpora, strict=False):
            base = [results[s][ch]["egemaps"].get(MAIN_BASELINE) for ch in names]
            ys = [np.nan if b is None else b["auroc"] for b in base]
            label = f"eGeMAPS {MAIN_BASELINE}, {_title(s)}"
            top.plot(x, ys, "--", marker="x", color=colour, alpha=0.6, label=label)
    top.set_ylabel("window AUROC")
    top.axhline(0.5, color="grey", linewidth=1, linestyle=":")
    top.legend(fontsize=7, ncol=2)
    middle.set_yscale("symlog", linthresh=1.0)
    middle.set_ylim(0, 100)
    bottom.set_ylim(0, 100)
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3, which="both")
    bottom.set_xticks(x, names, rotation=45, ha="right")
    fig.suptitle("test speakers through each channel: window AUROC, false and true positives")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate.robustness", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="ONNX model (repeatable)")
    parser.add_argument("--manifest", type=Path, action="append", required=True, help="corpus manifest.csv")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--figure", type=Path, help="AUROC and FPR per channel (PNG)")
    parser.add_argument("--channel", action="append", choices=channels.SUITE_NAMES, help="only these (repeatable)")
    parser.add_argument(
        "--egemaps",
        action="append",
        choices=[*BASELINES, "none"],
        help="baseline variants (default: normalised and raw; 'none' skips the baseline)",
    )
    parser.add_argument(
        "--egemaps-channel",
        action="append",
        choices=channels.SUITE_NAMES,
        help="score the baseline in these channels only (repeatable; default: every channel)",
    )
    parser.add_argument("--cache", type=Path, default=Path("runs/robustness-cache"), help="perturbed audio, features")
    parser.add_argument("--egemaps-cache", type=Path, default=Path("runs/egemaps-cache"), help="train features")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    names = [n for n in channels.SUITE_NAMES if args.channel is None or n in args.channel]
    variants = [v for v in BASELINES if v in (args.egemaps or BASELINES)]
    try:
        result = {
            "command": shlex.join(
                ["python", "-m", "tools.evaluate.robustness", *(sys.argv[1:] if argv is None else argv)]
            ),
            "models": [str(m) for m in args.model],
            "manifests": [str(m) for m in args.manifest],
            "split": "test",
            "channels": names,
            "main_baseline": MAIN_BASELINE if MAIN_BASELINE in variants else None,
            **run(args.model, args.manifest, names, variants, args.cache, args.egemaps_cache, args.egemaps_channel),
        }
    except (ModelError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    write_json(args.json, result)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(result) + "\n")
    if args.figure:
        figure(result, args.figure)
    print(json.dumps(summary_line(result)))


def summary_line(result: dict) -> dict:
    """Per set, the first model's AUROC in the first channel and its worst channel with the change."""
    model = result["models"][0]
    out = {}
    for name, by_channel in result["results"].items():
        first, *_ = by_channel.values()
        worst = min(by_channel, key=lambda ch: by_channel[ch]["models"][model]["auroc"])
        out[name] = {
            "auroc": round(first["models"][model]["auroc"], 4),
            "worst": worst,
            "worst_auroc": round(by_channel[worst]["models"][model]["auroc"], 4),
        }
    return out


if __name__ == "__main__":
    main()
