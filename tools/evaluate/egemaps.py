"""The baseline users would pick instead: eGeMAPS functionals per window + logistic regression.

    python -m tools.evaluate.egemaps --manifest ../shared/data/ravdess/manifest.csv \
        --manifest ../shared/data/ased/manifest.csv --manifest ../shared/data/emodb/manifest.csv \
        --json models/eval/egemaps.json [--telephone] [--model models/anger_fcn.onnx ...] [--plot roc.png]

openSMILE eGeMAPSv02 functionals (88 features) on each raw window that the network would score (same
windows, same silence gate: `tools.evaluate.scoring.clip_segments`; with --normalise each window is first scaled to
-20 dBFS RMS like the network's input, which removes the absolute-level cue), then StandardScaler +
LogisticRegression trained on every window of the manifests' train split (RAVDESS actors 01-16, ASED
train speakers) at 16 kHz, and evaluated on their test split, per corpus. --telephone passes the test audio
(only) through the 8 kHz mu-law channel. Each --model is scored on the same test windows and compared with
the baseline by DeLong's test. Features are cached per corpus, split and channel in --cache.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import opensmile
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from anger_stream import audio
from anger_stream.model import AngerModel, ModelError
from tools.evaluate.auroc import plot_roc, report, write_json
from tools.evaluate.scoring import WindowSet, iter_windows, join, load_clips, score_models
from tools.manifest import Clip


def window_features(clips: list[Clip], telephone: bool, level: bool) -> tuple[WindowSet, np.ndarray, float]:
    """eGeMAPS functionals of every non-silent window: (windows, features [n, 88], seconds per window).

    level=False scales each window to the network's -20 dBFS RMS first (no absolute-level cue).
    """
    windows = WindowSet(clips)
    features, per_window = segment_features(iter_windows(windows, telephone), level)
    return windows, features, per_window


def segment_features(segments: Iterable[np.ndarray], level: bool) -> tuple[np.ndarray, float]:
    """eGeMAPS functionals of raw segments: (features [n, 88], seconds per segment).

    level=False scales each segment to the network's -20 dBFS RMS first (no absolute-level cue).
    """
    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals
    )
    start = time.perf_counter()
    rows = [
        smile.process_signal(s if level else audio.normalise(s) / audio.FULL_SCALE, audio.SAMPLE_RATE).to_numpy()[0]
        for s in segments
    ]
    per_window = (time.perf_counter() - start) / max(len(rows), 1)
    return np.array(rows, dtype=np.float64).reshape(-1, 88), per_window


def cached_features(
    manifest: Path, split: str, telephone: bool, level: bool, cache: Path
) -> tuple[WindowSet, np.ndarray, float]:
    """`window_features` of one manifest's split, from `cache` when its clip list still matches."""
    clips = load_clips([manifest], split)
    channel = "mulaw8k" if telephone else "16k"
    path = cache / f"{clips[0].corpus}-{split}-{channel}{'' if level else '-normalised'}.npz"
    paths = np.array([c.path.relative_to(manifest.parent).as_posix() for c in clips])
    if path.is_file():
        saved = np.load(path)
        if np.array_equal(saved["paths"], paths):
            windows = WindowSet(clips, saved["clip_index"].tolist(), int(saved["n_gated"]))
            return windows, saved["features"], float(saved["seconds_per_window"])
    windows, features, per_window = window_features(clips, telephone, level)
    print(f"{path.name}: {len(features)} windows, {1000 * per_window:.1f} ms/window", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        paths=paths,
        clip_index=np.array(windows.clip_index, dtype=np.int64),
        n_gated=windows.n_gated,
        features=features,
        seconds_per_window=per_window,
    )
    return windows, features, per_window


def merge(parts: Sequence[tuple[WindowSet, np.ndarray, float]]) -> tuple[WindowSet, np.ndarray]:
    """Concatenate per-manifest windows and features into one set."""
    return join([windows for windows, _, _ in parts]), np.concatenate([f for _, f, _ in parts])


def fit(features: np.ndarray, labels: np.ndarray) -> Pipeline:
    """StandardScaler + logistic regression (default C = 1, no tuning)."""
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(features, labels)


def has_split(manifest: Path, split: str) -> bool:
    """Whether a manifest has any clip in a split."""
    return any(c.split == split for c in load_clips([manifest], "all"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate.egemaps", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, action="append", required=True, help="corpus manifest.csv")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--cache", type=Path, default=Path("runs/egemaps-cache"), help="feature cache folder")
    parser.add_argument("--telephone", action="store_true", help="test audio through 8 kHz G.711 mu-law")
    parser.add_argument("--normalise", action="store_true", help="features of -20 dBFS windows, not raw audio")
    parser.add_argument("--model", type=Path, action="append", default=[], help="ONNX model to compare")
    parser.add_argument("--plot", type=Path, help="ROC figure (PNG) of the baseline and the models")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        models = [AngerModel(m) for m in args.model]
        train = [
            cached_features(m, "train", False, not args.normalise, args.cache)
            for m in args.manifest
            if has_split(m, "train")
        ]
        if not train:
            raise ValueError("no train split in the manifests (RAVDESS or ASED needed)")
        test = [cached_features(m, "test", args.telephone, not args.normalise, args.cache) for m in args.manifest]
        train_windows, train_x = merge(train)
        test_windows, test_x = merge(test)
        baseline = fit(train_x, train_windows.labels).predict_proba(test_x)[:, 1]
        result = {
            "command": shlex.join(
                ["python", "-m", "tools.evaluate.egemaps", *(sys.argv[1:] if argv is None else argv)]
            ),
            "features": "openSMILE eGeMAPSv02 functionals (88) of "
            + ("windows scaled to -20 dBFS RMS" if args.normalise else "raw window audio"),
            "classifier": "StandardScaler + LogisticRegression(C=1)",
            "train": {"n_windows": len(train_x), "n_clips": len(train_windows.clips), "split": "train"},
            "ms_per_window": 1000 * float(np.mean([p for _, _, p in train + test])),
            "channel": "8 kHz G.711 mu-law" if args.telephone else "16 kHz",
            **report(test_windows, baseline),
            "models": {},
        }
        curves = {f"eGeMAPS + LR ({'-20 dBFS windows' if args.normalise else 'raw level'})": baseline}
        if models:
            net_windows, net_scores = score_models(models, test_windows.clips, args.telephone)
            if net_windows.clip_index != test_windows.clip_index:
                raise ValueError("network windows differ from the cached feature windows; clear --cache")
            for path, scores in zip(args.model, net_scores, strict=True):
                result["models"][str(path)] = report(test_windows, scores, baseline)
                curves[path.stem] = scores
    except (ModelError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    write_json(args.json, result)
    if args.plot:
        plot_roc(args.plot, test_windows.labels, test_windows.corpus, curves, f"window ROC, {result['channel']}")
    print(json.dumps({k: result[k] for k in ("auroc", "auroc_ci95", "utterance_auroc", "n_windows")}))


if __name__ == "__main__":
    main()
