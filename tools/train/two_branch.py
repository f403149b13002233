"""Build the two-branch model: the paper's FCN and YAMNet side by side in one ONNX graph.

    python -m tools.train.two_branch --fcn models/anger_fcn.onnx --yamnet Y/yamnet.tflite \
        --manifest M1 [--manifest M2 ...] --dev D --out models/anger_full.onnx [--cache runs/two_branch]

Natural anger is often a raised voice, which the acted training corpora rarely teach; YAMNet, trained on
AudioSet's YouTube audio, knows it. The graph takes the runtime's prepared windows and gives:

- `p`: p(anger) = sigmoid(a z + c), z = logit(p_fcn) + alpha * head + beta * (v - mu) / sd, where p_fcn is the
  FCN's own (calibrated) output, head a logistic regression over YAMNet's standardised 1024-d embedding and its
  Speech / raised-voice logits, trained on the training speakers' windows clean and through the channel suite
  (C = 0.01, balanced), and v the mean of YAMNet's raised-voice logits (Shout, Bellow, Whoop, Yell, Screaming);
- `raised`: a raised-voice score from v, sigmoid((v - v5) / s), where v5 is the level of v that 5 % of calm
  (non-angry) validation windows reach, clean and through the channel suite, and s its spread on them: 0.5 means
  "louder than 95 % of calm speech", in every language and channel alike; metadata thresholds
  (`raised_thresholds`) for 1 / 5 / 10 % of those calm windows. (YAMNet's own raised-voice probabilities sit near
  1e-5 on calm speech and rarely pass 0.1 on acted anger: not a readable number.)

The rule, fixed before any test set was scored: alpha and beta are the grid point (GRID x GRID) with the best
objective, the mean of the validation score (per-corpus validation AUROC of the training corpora, averaged
over corpora, clean and channel) and the dev score (--dev AUROC, clean and channel), as `tools.train.voice`
chose the raised-voice weight; then Platt scaling (a, c) and the thresholds on the validation windows. The test
speakers are scored for the report only. Features are cached in --cache (keyed by set, model and YAMNet mode).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from anger_stream import metrics
from tools.train import fold_pads, yamnet
from tools.train.export import OPSET, VERSION
from tools.train.train import eval_set, thresholds

GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
KEEP = (yamnet.SPEECH, *yamnet.RAISED)
"""The YAMNet classes whose logits join the embedding as head features (Speech, then the raised voice)."""
VOICE = list(range(1, len(KEEP)))
"""Columns of the raised-voice classes among the KEEP logits."""
C = 0.01
BATCH = 64


@dataclass
class Features:
    """Per window of a set: label, corpus, the FCN's logit, YAMNet's embedding and KEEP logits."""

    y: np.ndarray
    corpus: np.ndarray
    fcn: np.ndarray
    embedding: np.ndarray
    logits: np.ndarray

    @property
    def head_input(self) -> np.ndarray:
        return np.concatenate([self.embedding.astype(np.float64), self.logits], axis=1)

    @property
    def voice(self) -> np.ndarray:
        return self.logits[:, VOICE].mean(axis=1)

    def __add__(self, other: Features) -> Features:
        return Features(*(np.concatenate([getattr(self, f), getattr(other, f)]) for f in self.__dataclass_fields__))


def _session(path: str | Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, x: np.ndarray, outputs: list[str] | None = None) -> list[np.ndarray]:
    parts = [session.run(outputs, {"audio": x[i : i + BATCH]}) for i in range(0, len(x), BATCH)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def export_yamnet(model: yamnet.YAMNet, out: Path) -> None:
    """The bare YAMNet port as ONNX (outputs `embedding`, `logits`), for computing features."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(2, 19_200),), str(out), input_names=["audio"], output_names=["embedding", "logits"],
            dynamic_axes={"audio": {0: "batch", 1: "samples"}}, opset_version=OPSET, dynamo=False,
        )  # fmt: skip


def features(
    sets: dict[str, tuple[list[str], str | None]], fcn: Path, yam: yamnet.YAMNet, mode: str, cache: Path
) -> dict[str, Features]:
    """Features of every set, clean and through the channel suite ("<set>_ch"), from the cache where present."""
    key = hashlib.sha256(fcn.read_bytes()).hexdigest()[:12]
    cache.mkdir(parents=True, exist_ok=True)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        yam_path = Path(tmp) / "yamnet.onnx"
        export_yamnet(yam, yam_path)
        yam_session, fcn_session = _session(yam_path), _session(fcn)
        for name, (manifests, split) in sets.items():
            for channel in (False, True):
                set_name = name + ("_ch" if channel else "")
                path = cache / f"{set_name}_{mode}_{key}.npz"
                if not path.exists():
                    windows = eval_set(manifests, split, channel=channel)
                    embedding, logits = _run(yam_session, windows.x)
                    (p,) = _run(fcn_session, windows.x, ["p"])
                    np.savez(
                        path, y=windows.y, corpus=windows.corpus, fcn=_logit(p),
                        embedding=embedding.astype(np.float16), logits=logits[:, list(KEEP)].astype(np.float64),
                    )  # fmt: skip
                    print(f"features: {set_name} ({len(windows.y)} windows)", file=sys.stderr, flush=True)
                with np.load(path) as f:
                    out[set_name] = Features(f["y"], f["corpus"], f["fcn"], f["embedding"], f["logits"])
    return out


@dataclass
class Head:
    """Logistic regression over standardised head inputs, as one linear map of the raw inputs."""

    weight: np.ndarray
    bias: float

    def __call__(self, f: Features) -> np.ndarray:
        return f.head_input @ self.weight + self.bias


def train_head(train: Features) -> Head:
    """The head on the training speakers' windows (clean and channel): standardise, then C = 0.01, balanced."""
    from sklearn.linear_model import LogisticRegression

    x = train.head_input
    mean, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    fit = LogisticRegression(C=C, class_weight="balanced", max_iter=2000).fit((x - mean) / sd, train.y)
    weight = fit.coef_[0] / sd
    return Head(weight, float(fit.intercept_[0] - mean @ weight))


def auroc_by_corpus(f: Features, score: np.ndarray) -> dict[str, float]:
    out = {c: metrics.auroc(f.y[f.corpus == c], score[f.corpus == c]) for c in sorted(set(f.corpus))}
    out["mean"] = float(np.mean(list(out.values())))
    out["all"] = metrics.auroc(f.y, score)
    return out


@dataclass(frozen=True)
class Fusion:
    """z = fcn + alpha * head + beta * (voice - mu) / sd; p = sigmoid(scale * z + bias); the raised-voice score
    sigmoid((voice - raised_at) / raised_spread)."""

    alpha: float
    beta: float
    mu: float
    sd: float
    scale: float = 1.0
    bias: float = 0.0
    raised_at: float = 0.0
    raised_spread: float = 1.0

    def z(self, f: Features, head: Head) -> np.ndarray:
        return f.fcn + self.alpha * head(f) + self.beta * (f.voice - self.mu) / self.sd

    def p(self, f: Features, head: Head) -> np.ndarray:
        return 1 / (1 + np.exp(-(self.scale * self.z(f, head) + self.bias)))

    def raised(self, f: Features) -> np.ndarray:
        return 1 / (1 + np.exp(-(f.voice - self.raised_at) / self.raised_spread))


def sweep(feats: dict[str, Features], head: Head, mu: float, sd: float) -> list[dict]:
    """Every grid point's AUROCs on the validation and dev sets (clean, channel) and the objective."""
    rows = []
    for alpha in GRID:
        for beta in GRID:
            fusion = Fusion(alpha, beta, mu, sd)
            row: dict = {"alpha": alpha, "beta": beta}
            for name in ("val", "val_ch", "dev", "dev_ch"):
                row[name] = auroc_by_corpus(feats[name], fusion.z(feats[name], head))
            row["val_score"] = (row["val"]["mean"] + row["val_ch"]["mean"]) / 2
            row["dev_score"] = (row["dev"]["all"] + row["dev_ch"]["all"]) / 2
            row["objective"] = (row["val_score"] + row["dev_score"]) / 2
            rows.append(row)
    return rows


def platt(y: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=1e4).fit(z[:, None], y)
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


class TwoBranch(nn.Module):
    """YAMNet, the head and the fusion: (prepared audio, the FCN's p) -> (p, raised)."""

    def __init__(self, yam: yamnet.YAMNet, head: Head, fusion: Fusion) -> None:
        super().__init__()
        self.yamnet = yam
        self.register_buffer("head_weight", torch.tensor(head.weight, dtype=torch.float32))
        self.head_bias, self.fusion = head.bias, fusion

    def forward(self, audio: torch.Tensor, fcn_p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding, logits = self.yamnet(audio)
        kept = logits[:, list(KEEP)]
        head = torch.cat([embedding, kept], dim=1) @ self.head_weight + self.head_bias
        voice = kept[:, VOICE].mean(dim=1)
        f = self.fusion
        fcn = torch.logit(fcn_p.clamp(1e-7, 1 - 1e-7))
        z = fcn + f.alpha * head + f.beta * (voice - f.mu) / f.sd
        return torch.sigmoid(f.scale * z + f.bias), torch.sigmoid((voice - f.raised_at) / f.raised_spread)


def merge(fcn: Path, branch: TwoBranch, metadata: dict[str, str]) -> onnx.ModelProto:
    """One graph: input `audio` into the FCN (its nodes prefixed "fcn/") and the branch, outputs `p`, `raised`;
    YAMNet's Pad nodes folded into its convolutions (tools.train.fold_pads)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            branch, (torch.zeros(2, 19_200), torch.full((2,), 0.5)), buffer, input_names=["audio", "fcn_p"],
            output_names=["p", "raised"], opset_version=OPSET, dynamo=False,
            dynamic_axes={"audio": {0: "batch", 1: "samples"}, "fcn_p": {0: "batch"}, "p": {0: "batch"},
                          "raised": {0: "batch"}},
        )  # fmt: skip
    top = onnx.load_from_string(buffer.getvalue())
    bottom = onnx.compose.add_prefix(onnx.load(str(fcn)), "fcn/")
    graph = top.graph
    glue = [
        onnx.helper.make_node("Identity", ["audio"], ["fcn/audio"], name="fcn/input"),
        onnx.helper.make_node("Identity", ["fcn/p"], ["fcn_p"], name="fcn/output"),
    ]
    nodes = glue[:1] + list(bottom.graph.node) + glue[1:] + list(graph.node)
    merged = onnx.helper.make_graph(
        nodes, "two_branch", [i for i in graph.input if i.name == "audio"], list(graph.output),
        initializer=list(bottom.graph.initializer) + list(graph.initializer),
    )  # fmt: skip
    model = onnx.helper.make_model(merged, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    model.ir_version = top.ir_version
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return fold_pads.fold(model)  # YAMNet's "same" pads into its convolutions: the same outputs, faster


def build(args: argparse.Namespace) -> dict:
    """Features, head, sweep, calibration; writes the ONNX model and returns the run's record."""
    sets = {
        "train": (args.manifest, "train"),
        "val": (args.manifest, "val"),
        "dev": (args.dev, None),
        "test": (args.manifest, "test"),
    }
    yam = yamnet.load(args.yamnet, args.patches)
    feats = features(sets, args.fcn, yam, args.patches, args.cache)
    train = feats["train"] + feats["train_ch"]
    head = train_head(train)
    mu, sd = float(train.voice.mean()), float(train.voice.std())
    rows = sweep(feats, head, mu, sd)
    best = max(rows, key=lambda r: r["objective"])
    val = feats["val"] + feats["val_ch"]
    fusion = Fusion(best["alpha"], best["beta"], mu, sd)
    calm = val.voice[val.y == 0]
    fusion = replace(
        fusion, **dict(zip(("scale", "bias"), platt(val.y, fusion.z(val, head)), strict=True)),
        raised_at=float(np.quantile(calm, 0.95)), raised_spread=float(calm.std()),
    )  # fmt: skip
    p_val = fusion.p(val, head)
    raised = fusion.raised(val)[val.y == 0]
    record = {
        "fcn": str(args.fcn),
        "fcn_sha256": hashlib.sha256(args.fcn.read_bytes()).hexdigest(),
        "yamnet_patches": args.patches,
        "head": {"C": C, "features": len(head.weight), "train_windows": len(train.y)},
        "fusion": asdict(fusion),
        "thresholds": thresholds(val.y, p_val),
        "raised_thresholds": thresholds(np.zeros(len(raised), dtype=int), raised),
        "selected": {k: best[k] for k in ("val_score", "dev_score", "objective")},
        "sweep": rows,
        "test": {name: auroc_by_corpus(feats[name], fusion.z(feats[name], head)) for name in ("test", "test_ch")},
    }
    metadata = {
        "sample_rate": "16000", "window_s": "1.2", "hop_s": "0.6", "min_audio_s": "1.0",
        "normalisation": "-20 dBFS RMS then x256 (anger_stream.audio.normalise)",
        "variant": "two-branch (FCN + YAMNet)", "version": VERSION, "yamnet_patches": args.patches,
        "thresholds": json.dumps(record["thresholds"]), "raised_thresholds": json.dumps(record["raised_thresholds"]),
        "fusion": json.dumps(record["fusion"]), "fcn_sha256": record["fcn_sha256"],
        "training_data": "ased, nemo, ravdess (train speakers, tools.manifest splits); YAMNet: AudioSet (Apache-2.0)",
    }  # fmt: skip
    model = merge(args.fcn, TwoBranch(yam, head, fusion).eval(), metadata)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.train.two_branch", description=__doc__.splitlines()[0])
    ap.add_argument("--fcn", type=Path, required=True, help="the FCN's ONNX model (output p)")
    ap.add_argument("--yamnet", type=Path, required=True, help="yamnet.tflite (the shared pretrained copy)")
    ap.add_argument("--manifest", action="append", required=True, help="training corpus manifest.csv")
    ap.add_argument("--dev", action="append", required=True, help="corpus never trained on (EmoDB)")
    ap.add_argument("--patches", choices=sorted(yamnet.PATCHES), default="window", help="how YAMNet covers a window")
    ap.add_argument("--out", type=Path, required=True, help="the two-branch ONNX model")
    ap.add_argument("--cache", type=Path, default=Path("runs/two_branch"), help="feature cache")
    ap.add_argument("--log", type=Path, help="write the run's record (JSON) here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    record = build(args)
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_text(json.dumps(record, indent=1) + "\n")
    f = record["fusion"]
    print(f"wrote {args.out}: alpha {f['alpha']} beta {f['beta']}, objective {record['selected']['objective']:.4f}")


if __name__ == "__main__":
    main()
