"""Train an anger FCN: python -m tools.train --manifest M [--manifest M2] --variant T3 --steps N --out DIR.

Adam (lr 5e-3), balanced minibatches of 10, per-step cross-entropy (every output time step of a crop
carries the crop's label; the exported model averages the per-step softmax). Validation AUROC on run-time
windows every `--eval-every` minibatches; the state with the best selection score (mean of the per-corpus
validation AUROCs) is kept. At the end the best state is scored on validation, test and `--dev` corpora
(e.g. EmoDB); the test and dev numbers are reported, never used for selection.

Writes DIR/best.pt (state + variant + thresholds), DIR/metrics.json and DIR/history.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tools.data import MIN_ACTIVE, BalancedBatches, decode, load_tracks, windows
from tools.fcn import FCN, AngerProbability, build
from tools.manifest import load_manifest

FPRS = ("0.01", "0.05", "0.10")


@dataclass
class EvalSet:
    """Prepared run-time windows of a set of clips, with labels and corpus per window."""

    x: np.ndarray
    y: np.ndarray
    corpus: np.ndarray


def eval_set(manifests: list[str], split: str | None) -> EvalSet:
    """All gated run-time windows of the clips of `split` (None: all clips) of the manifests."""
    xs, ys, cs = [], [], []
    for manifest in manifests:
        for clip in load_manifest(manifest, split):
            w = windows(decode(clip.path))
            xs.append(w)
            ys += [clip.anger] * len(w)
            cs += [clip.corpus] * len(w)
    return EvalSet(np.concatenate(xs), np.array(ys), np.array(cs))


@torch.no_grad()
def predict(model: FCN, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """p(anger) of prepared windows, eval mode."""
    was_training = model.training
    model.eval()
    prob = AngerProbability(model)
    p = np.concatenate([prob(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])
    model.train(was_training)
    return p


def aurocs(s: EvalSet, p: np.ndarray) -> dict[str, float]:
    """AUROC per corpus, pooled ('all') and the mean over corpora ('mean')."""
    out = {c: float(roc_auc_score(s.y[s.corpus == c], p[s.corpus == c])) for c in sorted(set(s.corpus))}
    out["mean"] = float(np.mean(list(out.values())))
    out["all"] = float(roc_auc_score(s.y, p))
    return out


def thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Per target FPR, the lowest threshold t with mean(p[negatives] >= t) <= FPR."""
    neg = np.sort(p[y == 0])[::-1]
    return {f: float(np.nextafter(neg[int(float(f) * len(neg))], np.float32(1.0))) for f in FPRS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", action="append", required=True, help="training corpus manifest.csv")
    ap.add_argument("--dev", action="append", default=[], help="extra corpus scored at the end (EmoDB)")
    ap.add_argument("--variant", default="T3")
    ap.add_argument("--pretrained", help="SoundNet-8 conv1-5 npz (transfer variants)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--dropout", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=1, help="data-loading processes (0: in the main one)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--min-active", type=float, default=MIN_ACTIVE, help="least share of active 10 ms frames in a training crop"
    )
    ap.add_argument("--zero-noise", action="store_true", help="replace digital zeros in crops by a noise floor")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    model = build(args.variant, args.pretrained, args.dropout)
    val = eval_set(args.manifest, "val")
    batches = BalancedBatches(
        load_tracks(args.manifest, "train", args.min_active), args.seed, zero_noise=args.zero_noise
    )
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0
    )
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    history, best, best_state = [], None, None
    wait = compute = loss_sum = 0.0
    it = iter(loader)
    model.train()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        x, y = next(it)
        t1 = time.perf_counter()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y[:, None].expand(-1, logits.shape[-1]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        wait += t1 - t0
        compute += time.perf_counter() - t1
        loss_sum += loss.item()
        if step % args.eval_every == 0 or step == args.steps:
            n = step - (history[-1]["step"] if history else 0)
            row = {
                "step": step,
                "loss": loss_sum / n,
                "data_ms": 1e3 * wait / n,
                "step_ms": 1e3 * compute / n,
            }
            row.update({f"val_{k}": v for k, v in aurocs(val, predict(model, val.x)).items()})
            history.append(row)
            wait = compute = loss_sum = 0.0
            if best is None or row["val_mean"] > best["val_mean"]:
                best = row
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            print(
                f"\r{args.out.name} step {step}/{args.steps} loss {row['loss']:.3f} val {row['val_mean']:.3f}"
                f" (best {best['val_mean']:.3f} @{best['step']}) data {row['data_ms']:.0f} ms"
                f" step {row['step_ms']:.0f} ms",
                end="\n" if step == args.steps else "",
                file=sys.stderr,
                flush=True,
            )
    model.load_state_dict(best_state)
    p_val = predict(model, val.x)
    final = {"val": aurocs(val, p_val)}
    for name, s in (
        ("test", eval_set(args.manifest, "test")),
        ("dev", args.dev and eval_set(args.dev, None)),
    ):
        if s:
            final[name] = aurocs(s, predict(model, s.x))
    metrics = {
        "variant": args.variant,
        "training_data": sorted({Path(m).parent.name for m in args.manifest}),
        "seed": args.seed,
        "steps": args.steps,
        "lr": args.lr,
        "dropout": args.dropout,
        "min_active": args.min_active,
        "zero_noise": args.zero_noise,
        "best_step": best["step"],
        "final": final,
        "thresholds": thresholds(val.y, p_val),
        "history": history,
    }
    torch.save(
        {"variant": args.variant, "dropout": args.dropout, "state_dict": best_state, "metrics": metrics},
        args.out / "best.pt",
    )
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with (args.out / "history.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    print(json.dumps({"best_step": best["step"], **final}), file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
