"""Evaluate an exported anger model on corpus manifests, with the windows the runtime would score.

    python -m tools.evaluate --model models/anger_fcn.onnx --manifest ../shared/data/emodb/manifest.csv \
        --json models/eval/emodb.json [--split test] [--plot roc.png] [--compare other.onnx] [--telephone]

A window's label is its clip's `anger` (windows and scores: `tools.evaluate.scoring`). Reports window AUROC with a
DeLong 95% CI, utterance AUROC (mean of a clip's window scores), thresholds at 1/5/10% FPR and the rates at
the thresholds in the model's metadata, per corpus when several manifests are given, and with --compare
DeLong's test of the two models on the same windows. AUROC and its tests are `anger_stream.metrics`'
(DeLong); `report` and `summarise` are also the figures of `egemaps` and `robustness`.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anger_stream import metrics
from anger_stream.model import AngerModel, ModelError
from tools.evaluate.scoring import WindowSet, load_clips, score_models
from tools.manifest import SPLITS

TARGET_FPRS = (0.01, 0.05, 0.10)


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
