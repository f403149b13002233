"""Evaluate an exported anger model on corpus manifests, with the windows the runtime would score.

    python -m tools.evaluate --model models/anger_fcn.onnx --manifest ../shared/data/emodb/manifest.csv \
        --json models/eval/emodb.json [--split test] [--plot roc.png] [--compare other.onnx] [--telephone]

Each file is decoded with soundfile (resampled to 16 kHz if needed), optionally passed through an 8 kHz
mu-law telephone channel, cut into 1.2 s windows every 0.6 s (the last may be shorter, >= 1 s, zero-padded),
silence-gated at `audio.MIN_DBFS` and normalised exactly as at run time. A window's label is its clip's
`anger`. Reports window AUROC with a DeLong 95% CI, utterance AUROC (mean of a clip's window scores),
thresholds at 1/5/10% FPR and the rates at the thresholds in the model's metadata, per corpus when several
manifests are given, and with --compare DeLong's test of the two models on the same windows.
Torch-free: onnxruntime via `anger_stream.model.AngerModel`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from anger_stream import audio, metrics
from anger_stream.detector import window_bounds
from anger_stream.model import AngerModel, ModelError
from tools.manifest import SPLITS, Clip, load_manifest
from tools.telephone import telephone as telephone_channel

WINDOW = round(audio.WINDOW_S * audio.SAMPLE_RATE)
BATCH = 64
TARGET_FPRS = (0.01, 0.05, 0.10)


def load_audio(path: Path) -> np.ndarray:
    """A file as mono float32 at 16 kHz."""
    try:
        samples, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise ValueError(f"cannot read audio {path}: {exc}") from None
    return audio.resample(audio.mixdown(samples), rate)


def clip_segments(clip: Clip, telephone: bool = False) -> tuple[list[np.ndarray], int]:
    """The raw (unnormalised) segments of a clip that pass the silence gate, and how many were gated."""
    x = load_audio(clip.path)
    return gated_segments(telephone_channel(x) if telephone else x)


def gated_segments(x: np.ndarray) -> tuple[list[np.ndarray], int]:
    """The run-time windows of a 16 kHz signal that pass the silence gate (raw), and how many were gated."""
    segments = [x[s:e] for s, e in window_bounds(len(x))]
    kept = [seg for seg in segments if audio.dbfs(seg) >= audio.MIN_DBFS]
    return kept, len(segments) - len(kept)


@dataclass
class WindowSet:
    """Windows of a clip list: per-window clip index, label and corpus; how many were gated."""

    clips: list[Clip]
    clip_index: list[int] = field(default_factory=list)
    n_gated: int = 0

    @property
    def labels(self) -> np.ndarray:
        return np.array([self.clips[i].anger for i in self.clip_index], dtype=int)

    @property
    def corpus(self) -> np.ndarray:
        return np.array([self.clips[i].corpus for i in self.clip_index])


def join(parts: Sequence[WindowSet]) -> WindowSet:
    """Several window sets as one (their clip lists concatenated)."""
    joined = WindowSet([])
    for windows in parts:
        joined.clip_index += [i + len(joined.clips) for i in windows.clip_index]
        joined.clips += windows.clips
        joined.n_gated += windows.n_gated
    return joined


def iter_windows(windows: WindowSet, telephone: bool = False) -> Iterator[np.ndarray]:
    """Yield the raw segments of every clip in `windows.clips`, recording their clips and the gated count."""
    signals = (load_audio(clip.path) for clip in windows.clips)
    yield from iter_segments(windows, (telephone_channel(x) for x in signals) if telephone else signals)


def iter_segments(windows: WindowSet, signals: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Yield the gated run-time segments of each 16 kHz signal (one per clip of `windows.clips`, in order),
    recording their clips and the gated count."""
    for i, x in enumerate(signals):
        segments, gated = gated_segments(x)
        windows.n_gated += gated
        for segment in segments:
            windows.clip_index.append(i)
            yield segment


def score_models(
    models: Sequence[AngerModel], clips: list[Clip], telephone: bool = False
) -> tuple[WindowSet, list[np.ndarray]]:
    """Score every non-silent window of the clips with each model (batched); returns windows and scores."""
    windows = WindowSet(clips)
    return windows, score_segments(models, iter_windows(windows, telephone))


def score_segments(models: Sequence[AngerModel], segments: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Each model's p for every raw segment, prepared as at run time (batched)."""
    scores: list[list[np.ndarray]] = [[] for _ in models]
    batch: list[np.ndarray] = []

    def flush() -> None:
        prepared = np.stack(batch)
        for model, out in zip(models, scores, strict=True):
            out.append(model.predict(prepared))
        batch.clear()

    for segment in segments:
        batch.append(audio.prepare_window(segment, WINDOW))
        if len(batch) == BATCH:
            flush()
    if batch:
        flush()
    return [np.concatenate(s) if s else np.zeros(0, np.float32) for s in scores]


def utterance_scores(windows: WindowSet, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, scores) per clip with at least one scored window: the mean of its window scores."""
    index = np.asarray(windows.clip_index)
    clips = np.unique(index)
    means = np.bincount(index, weights=scores)[clips] / np.bincount(index)[clips]
    return np.array([windows.clips[i].anger for i in clips]), means


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarise(windows: WindowSet, scores: np.ndarray, other: np.ndarray | None = None) -> dict:
    """Window and utterance AUROC with CIs, thresholds, counts; with `other`, its AUROCs and DeLong p."""
    y = windows.labels
    auc, lo, hi = metrics.auroc_ci(y, scores)
    uy, us = utterance_scores(windows, scores)
    uauc, ulo, uhi = metrics.auroc_ci(uy, us)
    out = {
        "auroc": auc,
        "auroc_ci95": [lo, hi],
        "utterance_auroc": uauc,
        "utterance_auroc_ci95": [ulo, uhi],
        "n_windows": len(y),
        "n_angry_windows": int(y.sum()),
        "n_utterances": len(uy),
        "n_angry_utterances": int(uy.sum()),
        "thresholds": [
            {"target_fpr": op.target_fpr, "threshold": _finite(op.threshold), "fpr": op.fpr, "tpr": op.tpr}
            for op in (metrics.threshold_at_fpr(y, scores, f) for f in TARGET_FPRS)
        ],
    }
    if other is not None:
        _, oauc, p = metrics.delong_test(y, scores, other)
        _, olo, ohi = metrics.auroc_ci(y, other)
        _, ous = utterance_scores(windows, other)
        _, ouauc, up = metrics.delong_test(uy, us, ous)
        out["compare"] = {
            "auroc": oauc,
            "auroc_ci95": [olo, ohi],
            "utterance_auroc": ouauc,
            "p_value": p,
            "utterance_p_value": up,
        }
    return out


def subset(windows: WindowSet, mask: np.ndarray) -> WindowSet:
    """The windows selected by a boolean mask (clip list shared)."""
    return WindowSet(windows.clips, [i for i, keep in zip(windows.clip_index, mask, strict=True) if keep])


def report(windows: WindowSet, scores: np.ndarray, other: np.ndarray | None = None) -> dict:
    """`summarise` over all windows, plus the same per corpus when there are several corpora."""
    out = summarise(windows, scores, other)
    out["n_clips"] = len(windows.clips)
    out["n_gated"] = windows.n_gated
    corpora = windows.corpus
    if len(set(corpora)) > 1:
        out["by_corpus"] = {
            name: summarise(
                subset(windows, corpora == name),
                scores[corpora == name],
                None if other is None else other[corpora == name],
            )
            for name in sorted(set(corpora))
        }
    return out


def at_thresholds(windows: WindowSet, scores: np.ndarray, thresholds: dict[str, float]) -> dict:
    """FPR and TPR at named thresholds (e.g. those in the model's metadata), overall and per corpus."""
    corpora = windows.corpus
    groups = {"all": np.ones(len(scores), bool)} | {c: corpora == c for c in dict.fromkeys(corpora)}
    return {
        name: {
            group: dict(zip(("fpr", "tpr"), metrics.rates(windows.labels[mask], scores[mask], t), strict=True))
            for group, mask in groups.items()
        }
        | {"threshold": t}
        for name, t in thresholds.items()
    }


def plot_roc(path: Path, labels: np.ndarray, corpus: np.ndarray, curves: dict[str, np.ndarray], title: str) -> None:
    """ROC curves, one panel per corpus, one line per named score vector (AUROC in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(corpus))  # in manifest order
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        mask = corpus == name
        for label, s in curves.items():
            fpr, tpr, _ = metrics.roc_curve(labels[mask], s[mask])
            ax.plot(fpr, tpr, label=f"{label} ({metrics.auroc(labels[mask], s[mask]):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{name} ({mask.sum()} windows)", xlabel="false-positive rate", ylabel="true-positive rate")
        ax.set_aspect("equal")
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_clips(manifests: Sequence[Path], split: str) -> list[Clip]:
    """Clips of the manifests in one split ('all' for every clip); a clear error if there are none."""
    clips: list[Clip] = []
    for manifest in manifests:
        if not manifest.is_file():
            raise ValueError(f"manifest not found: {manifest}")
        try:
            clips += load_manifest(manifest, None if split == "all" else split)
        except KeyError as exc:
            raise ValueError(f"manifest {manifest} has no column {exc}") from None
        except ValueError as exc:
            raise ValueError(f"bad value in manifest {manifest}: {exc}") from None
    if not clips:
        raise ValueError(f"no clips in split {split!r} of {', '.join(map(str, manifests))}")
    return clips


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="ONNX model to evaluate")
    parser.add_argument("--manifest", type=Path, action="append", required=True, help="corpus manifest.csv")
    parser.add_argument("--split", default="test", choices=[*SPLITS, "all"], help="speaker split (test)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--plot", type=Path, help="ROC figure (PNG)")
    parser.add_argument("--compare", type=Path, help="a second ONNX model: DeLong test on the same windows")
    parser.add_argument("--telephone", action="store_true", help="pass audio through 8 kHz G.711 mu-law")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        models = [AngerModel(args.model)] + ([AngerModel(args.compare)] if args.compare else [])
        clips = load_clips(args.manifest, args.split)
        windows, scores = score_models(models, clips, args.telephone)
        result = {
            "command": shlex.join(["python", "-m", "tools.evaluate", *(sys.argv[1:] if argv is None else argv)]),
            "model": str(args.model),
            "compare_model": str(args.compare) if args.compare else None,
            "manifests": [str(m) for m in args.manifest],
            "split": args.split,
            "channel": "8 kHz G.711 mu-law" if args.telephone else "16 kHz",
            **report(windows, scores[0], scores[1] if args.compare else None),
            "metadata_thresholds": at_thresholds(windows, scores[0], models[0].meta_json("thresholds", {})),
        }
    except (ModelError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    write_json(args.json, result)
    if args.plot:
        curves = {f"model {args.model.stem}": scores[0]}
        if args.compare:
            curves[f"compare {args.compare.stem}"] = scores[1]
        plot_roc(args.plot, windows.labels, windows.corpus, curves, f"window ROC, {result['channel']}")
    print(json.dumps({k: result[k] for k in ("auroc", "auroc_ci95", "utterance_auroc", "n_windows")}))


if __name__ == "__main__":
    main()
