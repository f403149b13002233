"""Window AUROC of simple cues and of models by speech share of the window.

    python -m tools.train.window_cues --manifest ../shared/data/ravdess/manifest.csv \
        --manifest ../shared/data/ased/manifest.csv [--model M.onnx ...] [--json out.json]

Run-time windows of the test split (EmoDB: all clips), gated at `audio.MIN_DBFS` as at run time. Per
corpus: the AUROC of the raw window level (`audio.dbfs`, a cue the eGeMAPS baseline can use) and of the
speech share alone (share of the window's 10 ms frames within 40 dB of its loudest frame; zero padding
counts as inactive), and each model's AUROC overall, in the speech-share bins < 0.3, 0.3-0.6, >= 0.6, and
with every exact digital zero of the raw window replaced by a noise floor (`data.fill_zeros`, seed 0) as a
real microphone would deliver it (`auroc_zeros_filled`: a model using digital silence as a cue would change).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from anger_stream import audio, metrics
from anger_stream.detector import windows
from anger_stream.model import AngerModel
from tools.manifest import load_manifest
from tools.train.data import ACTIVE_DB, FRAME, WINDOW, decode, fill_zeros

BINS = ((0.0, 0.3), (0.3, 0.6), (0.6, 1.0))


def speech_share(segment: np.ndarray) -> float:
    """Share of the WINDOW's 10 ms frames within ACTIVE_DB of its loudest frame (segment zero-padded)."""
    w = np.zeros(WINDOW, dtype=np.float32)
    w[: len(segment)] = segment[:WINDOW]
    level = np.asarray(audio.dbfs(w.reshape(-1, FRAME)))
    return float(np.mean(level >= level.max() - ACTIVE_DB))


def auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC, or None when a class is missing."""
    return metrics.auroc(y, score) if len(set(y.tolist())) == 2 else None


def corpus_cues(manifest: Path, split: str | None, models: list[Path]) -> dict:
    """Level-only, share-only and per-model (overall and per share bin) window AUROC of one corpus."""
    y, level, share, xs, filled = [], [], [], [], []
    rng = np.random.default_rng(0)
    for clip in load_manifest(manifest, split):
        x = decode(clip.path)
        for window in windows(x):
            seg = window.audio
            if audio.dbfs(seg) < audio.MIN_DBFS:
                continue
            y.append(clip.anger)
            level.append(float(audio.dbfs(seg)))
            share.append(speech_share(seg))
            xs.append(audio.prepare_window(seg, WINDOW))
            padded = np.zeros(WINDOW, dtype=np.float32)
            padded[: len(seg)] = seg
            filled.append(audio.prepare_window(fill_zeros(padded, rng), WINDOW))
    yy, sh = np.array(y), np.array(share)
    out: dict = {
        "n_windows": len(yy),
        "level_auroc": auroc(yy, np.array(level)),
        "share_auroc": auroc(yy, sh),
        "models": {},
    }
    x, xf = np.stack(xs), np.stack(filled)
    for m in models:
        model = AngerModel(m)

        def run(z: np.ndarray, model: AngerModel = model) -> np.ndarray:
            return np.concatenate([model.predict(z[i : i + 256]) for i in range(0, len(z), 256)])

        p = run(x)
        bins = {}
        for lo, hi in BINS:
            sel = (sh >= lo) & ((sh < hi) if hi < 1.0 else (sh <= hi))
            bins[f"{lo}-{hi}"] = {"n_windows": int(sel.sum()), "auroc": auroc(yy[sel], p[sel])}
        out["models"][str(m)] = {"auroc": auroc(yy, p), "auroc_zeros_filled": auroc(yy, run(xf)), "by_share": bins}
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, action="append", required=True)
    ap.add_argument("--split", default="test", help="'none': all clips")
    ap.add_argument("--model", type=Path, action="append", default=[])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    split = None if args.split == "none" else args.split
    result = {"command": "python -m tools.train.window_cues " + " ".join(argv if argv is not None else sys.argv[1:])}
    result["by_corpus"] = {m.parent.name: corpus_cues(m, split, args.model) for m in args.manifest}
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
