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

from anger_stream import metrics
from tools import channels
from tools.manifest import load_manifest
from tools.train import prosody
from tools.train.data import MIN_ACTIVE, BalancedBatches, decode, load_tracks, windows
from tools.train.fcn import FCN, AngerProbability, Voice, build, logit
from tools.train.teacher import CLASSES as TEACHER_CLASSES
from tools.train.teacher import EMBEDDING_SIZE, Teacher

FPRS = ("0.01", "0.05", "0.10")


@dataclass
class EvalSet:
    """Prepared run-time windows of a set of clips, with labels and corpus per window."""

    x: np.ndarray
    y: np.ndarray
    corpus: np.ndarray


def joined(*sets: EvalSet) -> EvalSet:
    """Several window sets as one."""
    return EvalSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in ("x", "y", "corpus")))


CHANNELS = tuple(name for name in channels.SUITE_NAMES if name != "clean")


def eval_set(manifests: list[str], split: str | None, channel: bool = False) -> EvalSet:
    """All gated run-time windows of the clips of `split` (None: all clips) of the manifests.

    With `channel`, clip i passes through suite channel CHANNELS[i % len(CHANNELS)] (seed i; babble from
    the set's clips): every channel of the suite, spread over the set's clips."""
    clips = [clip for manifest in manifests for clip in load_manifest(manifest, split)]
    audio = [decode(clip.path) for clip in clips]
    pool = np.concatenate(audio) if channel else None
    xs, ys, cs = [], [], []
    for i, (clip, x) in enumerate(zip(clips, audio, strict=True)):
        if channel:
            x = channels.suite_channel(CHANNELS[i % len(CHANNELS)], x, i, pool)
        w = windows(x)
        if len(w):
            xs.append(w)
            ys += [clip.anger] * len(w)
            cs += [clip.corpus] * len(w)
    return EvalSet(np.concatenate(xs), np.array(ys), np.array(cs))


@torch.no_grad()
def predict(
    model: FCN,
    x: np.ndarray,
    calibration: list[float] | None = None,
    voice: Voice | None = None,
    batch: int = 256,
) -> np.ndarray:
    """p(anger) of prepared windows, eval mode (with a raised-voice term and calibrated when given)."""
    was_training = model.training
    model.eval()
    prob = AngerProbability(model, calibration, voice)
    p = np.concatenate([prob(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])
    model.train(was_training)
    return p


def aurocs(s: EvalSet, p: np.ndarray) -> dict[str, float]:
    """AUROC per corpus, pooled ('all') and the mean over corpora ('mean')."""
    out = {c: metrics.auroc(s.y[s.corpus == c], p[s.corpus == c]) for c in sorted(set(s.corpus))}
    out["mean"] = float(np.mean(list(out.values())))
    out["all"] = metrics.auroc(s.y, p)
    return out


def target_projection(batches: BalancedBatches, components: int, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and projection W of the extra targets (the teacher's, then the prosodic functionals), from `n`
    batches of a separate seed: (t - mean) @ W gives the teacher's logits and the functionals z-scored and,
    with an embedding, its first `components` principal components whitened. Undefined (NaN) functionals
    are left out of the statistics; the training loss leaves them out too."""
    probe = BalancedBatches(batches.tracks, batches.seed + 1000, zero_noise=batches.zero_noise, teacher=batches.teacher)
    t = torch.cat([b[2] for b, _ in zip(probe, range(n), strict=False)]).double()
    teacher = batches.teacher
    k = len(TEACHER_CLASSES) if teacher else 0
    e = EMBEDDING_SIZE if teacher and teacher.embedding else 0
    mean = t.nanmean(dim=0)
    std = torch.from_numpy(np.nanstd(t.numpy(), axis=0, ddof=1))
    std = torch.where(std > 1e-12, std, 1.0)  # a constant target stays as it is (jitter is ~1e-4)
    p = t.shape[1] - k - e
    w = torch.zeros(t.shape[1], k + components + p, dtype=torch.float64)
    w[:k, :k] = torch.diag(1 / std[:k])
    w[k + e :, k + components :] = torch.diag(1 / std[k + e :])
    if components:
        centred = t[:, k : k + e] - mean[k : k + e]
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        spread = s[:components] / (len(centred) - 1) ** 0.5  # of each principal component
        w[k : k + e, k : k + components] = v[:components].T / spread.clamp_min(1e-6)
    return mean.float(), w.float()


def platt(y: np.ndarray, p: np.ndarray) -> list[float]:
    """Platt scaling: [scale, bias] of the logistic regression of the label on logit(p)."""
    from sklearn.linear_model import LogisticRegression

    z = logit(torch.from_numpy(p.astype(np.float32))).numpy()[:, None]
    fit = LogisticRegression(C=1e4).fit(z, y)
    return [float(fit.coef_[0, 0]), float(fit.intercept_[0])]


def thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Per target FPR, the lowest threshold t with mean(p[negatives] >= t) <= FPR."""
    neg = np.sort(p[y == 0])[::-1]
    return {f: float(np.nextafter(neg[int(float(f) * len(neg))], np.float32(1.0))) for f in FPRS}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.train", description=__doc__.splitlines()[0])
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
    ap.add_argument("--channels", type=float, default=0.0, help="share of training crops through a random channel")
    ap.add_argument("--teacher", help="YAMNet tflite: its raised-voice logits become extra training targets")
    ap.add_argument("--teacher-weight", type=float, default=0.5, help="weight of the teacher loss")
    ap.add_argument(
        "--teacher-embedding",
        type=int,
        default=0,
        metavar="K",
        help="also learn the first K principal components of the teacher's embedding",
    )
    ap.add_argument(
        "--prosody", action="store_true", help="also learn eGeMAPS-style functionals of each crop (tools.train.prosody)"
    )
    ap.add_argument("--prosody-weight", type=float, default=1.0, help="weight of the prosody loss")
    ap.add_argument(
        "--select",
        choices=("clean", "channels"),
        default="clean",
        help="checkpoint selection: mean per-corpus validation AUROC on clean windows, or the mean of clean"
        " and channel-perturbed validation (then also calibrated on both)",
    )
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = Teacher(args.teacher, embedding=args.teacher_embedding > 0) if args.teacher else None
    learnt = len(TEACHER_CLASSES) + args.teacher_embedding if teacher else 0  # teacher outputs
    extra = learnt + (len(prosody.FUNCTIONALS) if args.prosody else 0)
    model = build(args.variant, args.pretrained, args.dropout, extra)
    val = eval_set(args.manifest, "val")
    val_channel = eval_set(args.manifest, "val", channel=True) if args.select == "channels" else None
    tracks = load_tracks(args.manifest, "train", args.min_active)
    if args.prosody:
        for track, lld in zip(tracks, prosody.all_descriptors([t.samples for t in tracks]), strict=True):
            track.descriptors = lld
    batches = BalancedBatches(
        tracks,
        args.seed,
        zero_noise=args.zero_noise,
        channel_p=args.channels,
        teacher=teacher,
    )
    projection = target_projection(batches, args.teacher_embedding) if extra else None
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, num_workers=args.workers, persistent_workers=args.workers > 0
    )
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    history, best, best_state = [], None, None
    wait = compute = loss_sum = prosody_sum = 0.0
    it = iter(loader)
    model.train()
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        x, y, *targets = next(it)
        t1 = time.perf_counter()
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits[:, :2], y[:, None].expand(-1, logits.shape[-1]))
        if targets:
            missing = torch.isnan(targets[0])
            z = (torch.where(missing, projection[0], targets[0]) - projection[0]) @ projection[1]
            out = logits[:, 2:].mean(dim=-1)
            if teacher:
                loss = loss + args.teacher_weight * torch.nn.functional.mse_loss(out[:, :learnt], z[:, :learnt])
            if args.prosody:
                known = ~missing[:, -len(prosody.FUNCTIONALS) :]
                prosody_loss = torch.square(out[:, learnt:] - z[:, learnt:])[known].mean()
                loss = loss + args.prosody_weight * prosody_loss
                prosody_sum += prosody_loss.item()
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
                "prosody_loss": prosody_sum / n,
                "data_ms": 1e3 * wait / n,
                "step_ms": 1e3 * compute / n,
            }
            row.update({f"val_{k}": v for k, v in aurocs(val, predict(model, val.x)).items()})
            row["score"] = row["val_mean"]
            if val_channel is not None:
                row.update({f"valch_{k}": v for k, v in aurocs(val_channel, predict(model, val_channel.x)).items()})
                row["score"] = (row["val_mean"] + row["valch_mean"]) / 2
            history.append(row)
            wait = compute = loss_sum = prosody_sum = 0.0
            if best is None or row["score"] > best["score"]:
                best = row
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            print(
                f"\r{args.out.name} step {step}/{args.steps} loss {row['loss']:.3f} val {row['val_mean']:.3f}"
                f" score {row['score']:.3f} (best {best['score']:.3f} @{best['step']}) data {row['data_ms']:.0f} ms"
                f" step {row['step_ms']:.0f} ms",
                end="\n" if step == args.steps else "",
                file=sys.stderr,
                flush=True,
            )
    model.load_state_dict(best_state)
    calibration = None
    if val_channel is not None:
        both = joined(val, val_channel)
        calibration = platt(both.y, predict(model, both.x))
    else:
        both = val
    p_val = predict(model, both.x, calibration)
    final = {"val": aurocs(val, predict(model, val.x))}
    if val_channel is not None:
        final["val_channels"] = aurocs(val_channel, predict(model, val_channel.x))
    for name, s in (
        ("test", eval_set(args.manifest, "test")),
        ("test_channels", val_channel is not None and eval_set(args.manifest, "test", channel=True)),
        ("dev", args.dev and eval_set(args.dev, None)),
        ("dev_channels", args.dev and val_channel is not None and eval_set(args.dev, None, channel=True)),
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
        "channels": args.channels,
        "teacher": teacher
        and {
            "classes": list(TEACHER_CLASSES.values()),
            "embedding_components": args.teacher_embedding,
            "weight": args.teacher_weight,
        },
        "prosody": args.prosody and {"functionals": list(prosody.FUNCTIONALS), "weight": args.prosody_weight},
        "select": args.select,
        "calibration": calibration,
        "best_step": best["step"],
        "final": final,
        "thresholds": thresholds(both.y, p_val),
        "history": history,
    }
    torch.save(
        {
            "variant": args.variant,
            "dropout": args.dropout,
            "calibration": calibration,
            "extra": extra,
            "state_dict": best_state,
            "metrics": metrics,
        },
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
