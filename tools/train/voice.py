"""Add a raised-voice term to a teacher-trained network's anger score.

    python -m tools.train.voice --checkpoint runs/X/best.pt --manifest M [--manifest M2 ...] --dev D \
        --out runs/X/voice.pt

Acted anger (RAVDESS, ASED, nEMO) is often not a raised voice; natural anger often is: YAMNet's zero-shot
raised-voice score is near chance on those three corpora but separates the angry windows of EmoDB (.82) and
of natural broadcast speech (.86). A network trained with the teacher (`tools.train --teacher`) has learnt
copies of YAMNet's z-scored raised-voice logits (Shout, Bellow, Whoop, Yell, Screaming) as extra outputs.
This step adds their mean, times a weight w, to the network's anger logit, inside the exported graph
(`tools.train.fcn.Voice`); the runtime still runs one small network and never YAMNet.

w is chosen on a grid to maximise the mean of two scores, each the mean of clean and channel-perturbed
window AUROC: the per-corpus validation speakers of the training corpora, and the --dev corpus (never trained
on, whose anger is the raised kind). The dev corpus is then a selection set for this one number and no longer
unbiased. Calibration (Platt scaling) and the thresholds are refitted on the validation windows with the term,
as `tools.train` fits them; the test speakers are scored for the report only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from tools.train.export import load_checkpoint
from tools.train.fcn import FCN, Voice, logit
from tools.train.teacher import CLASSES, RAISED
from tools.train.train import EvalSet, aurocs, eval_set, joined, platt, predict, thresholds

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
CHANNELS = tuple(2 + list(CLASSES.values()).index(name) for name in RAISED)
"""The raised-voice outputs of a teacher-trained network (the teacher's logits follow the 2 classes)."""


@torch.no_grad()
def parts(model: FCN, x: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The anger logit (uncalibrated) and the raised-voice term with weight 1 of prepared windows."""
    model.eval()
    anger, voice = [], []
    for i in range(0, len(x), batch):
        out = model(torch.from_numpy(x[i : i + batch]))
        anger.append(logit(torch.softmax(out[:, :2], dim=1)[:, 1].mean(dim=-1)).numpy())
        voice.append(out[:, list(CHANNELS)].mean(dim=(1, 2)).numpy())
    return np.concatenate(anger), np.concatenate(voice)


def sweep(model: FCN, sets: dict[str, EvalSet]) -> list[dict]:
    """Per weight: window AUROCs of every set, the validation and dev scores and their mean (the objective)."""
    split = {name: parts(model, s.x) for name, s in sets.items()}
    rows = []
    for w in WEIGHTS:
        row: dict = {"weight": w, **{name: aurocs(sets[name], a + w * v) for name, (a, v) in split.items()}}
        row["val_score"] = (row["val"]["mean"] + row["val_channels"]["mean"]) / 2
        row["dev_score"] = (row["dev"]["all"] + row["dev_channels"]["all"]) / 2
        row["objective"] = (row["val_score"] + row["dev_score"]) / 2
        rows.append(row)
        print(
            f"w {w:.2f}: val {row['val_score']:.3f} dev {row['dev_score']:.3f} objective {row['objective']:.3f}",
            file=sys.stderr,
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="a tools.train checkpoint trained with --teacher")
    ap.add_argument("--manifest", action="append", required=True, help="training corpus manifest.csv (validation)")
    ap.add_argument("--dev", action="append", required=True, help="corpus never trained on (EmoDB)")
    ap.add_argument("--out", type=Path, required=True, help="checkpoint with the raised-voice term")
    args = ap.parse_args(argv)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    if not ckpt["metrics"].get("teacher"):
        raise SystemExit(f"error: {args.checkpoint} was not trained with --teacher (no raised-voice outputs)")
    model = load_checkpoint(args.checkpoint, keep=len(CLASSES))[0]
    sets = {
        "val": eval_set(args.manifest, "val"),
        "val_channels": eval_set(args.manifest, "val", channel=True),
        "dev": eval_set(args.dev, None),
        "dev_channels": eval_set(args.dev, None, channel=True),
        "test": eval_set(args.manifest, "test"),
        "test_channels": eval_set(args.manifest, "test", channel=True),
    }
    rows = sweep(model, sets)
    best = max(rows, key=lambda r: r["objective"])
    voice = Voice(CHANNELS, best["weight"])
    val = joined(sets["val"], sets["val_channels"])
    calibration = platt(val.y, predict(model, val.x, voice=voice))
    metrics = {
        **ckpt["metrics"],
        "calibration": calibration,
        "thresholds": thresholds(val.y, predict(model, val.x, calibration, voice)),
        "voice": {"outputs": list(RAISED), "channels": list(voice.channels), "weight": voice.weight, "sweep": rows},
    }
    voice_state = {"channels": list(voice.channels), "weight": voice.weight}
    torch.save({**ckpt, "calibration": calibration, "voice": voice_state, "metrics": metrics}, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps({"weight": voice.weight, **{k: best[k] for k in sets}}), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
