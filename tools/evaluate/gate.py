"""Would a cheap gate keep the two-branch model's AUROC while running its YAMNet branch on fewer windows?

    python -m tools.evaluate.gate --manifest ../shared/data/ravdess/manifest.csv \
        --manifest ../shared/data/ased/manifest.csv --manifest ../shared/data/nemo/manifest.csv \
        --dev ../shared/data/emodb/manifest.csv --json docs/gate.json [--cache runs/gate]

`full` is `fast`'s FCN plus a YAMNet head, fused as p = sigmoid(scale z + bias), z = logit(p_fcn) + alpha head
(metadata `fusion`; beta is 0). Both models score every window once (test speakers of the --manifest corpora
and every --dev clip; validation speakers for h0), clean and through the 8 kHz G.711 mu-law line; the table
(level, voicing, p_fast, p_full per window) is cached in --cache, so the rules below cost nothing to rerun.
Each window's head is recovered from p_full and p_fast. A gate decides per window whether YAMNet runs: if it
does, the window keeps full's p; if not, its head is the rule's h0, the median head of the validation windows
that the same rule leaves out (clean and telephone): the head such a window most likely has, a constant that
needs no state and is fixed on speakers outside the test. Rules: the level (dBFS of the raw window) at least
delta above the speaker's baseline (the median of all the speaker's windows: non-causal; or, causal, the
median of the speaker's windows so far, clips in a fixed shuffled order), the voicing at least a threshold,
both, and for reference the top fraction of p_fcn. Window AUROC (`anger_stream.metrics`) per corpus and
pooled over the --manifest corpora, against full and fast: on the test windows, and on the validation
speakers (where a rule would be chosen).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import scipy.fft

from anger_stream import audio, metrics
from anger_stream.model import AngerModel, ModelError
from tools.evaluate.scoring import WindowSet, iter_windows, load_clips, score_segments
from tools.manifest import Clip

CHANNELS = {"clean": False, "telephone": True}
TOLERANCE = 0.01
"""The AUROC a gate may lose against full, in every corpus and channel."""
LEVEL_DELTAS = (-6.0, -3.0, 0.0, 3.0, 6.0)
VOICING_THRESHOLDS = (0.4, 0.5, 0.55, 0.6, 0.7)
COMBINED = ((-3.0, 0.5), (0.0, 0.5), (-3.0, 0.6), (0.0, 0.6))
"""(level delta, voicing threshold) pairs: YAMNet runs where both pass."""
FCN_FRACTIONS = (0.25, 0.5, 0.75)
SEED = 0

VOICING_STAGES = 3
"""Halvings of the rate before the autocorrelation: 16 kHz -> 2 kHz (pitch up to 400 Hz stays below 1 kHz)."""
_RATE = audio.SAMPLE_RATE >> VOICING_STAGES
_FRAME = round(0.04 * _RATE)
_LAGS = np.arange(_RATE // 400, _RATE // 60 + 1)
_NFFT = 1 << int(np.ceil(np.log2(_FRAME + _LAGS[-1] + 1)))


def voicing(segment: np.ndarray) -> float:
    """Mean over 40 ms frames of the peak normalised autocorrelation at lags of 60-400 Hz (1: periodic)."""
    step = (1 << VOICING_STAGES) * _FRAME
    x = np.asarray(segment, dtype=np.float32)[: len(segment) // step * step]
    for _ in range(VOICING_STAGES):  # pairwise sums: a cheap low-pass and decimation by 2
        x = x[0::2] + x[1::2]
    x = x.reshape(-1, _FRAME)
    x = x - x.mean(axis=1, keepdims=True)
    spectrum = scipy.fft.rfft(x, _NFFT)
    r = scipy.fft.irfft(spectrum.real**2 + spectrum.imag**2, _NFFT)[:, _LAGS]
    energy = np.cumsum(x * x, axis=1)  # r[k] over sqrt(energy of x[:-k] * energy of x[k:])
    norm = np.sqrt(energy[:, _FRAME - 1 - _LAGS] * (energy[:, -1:] - energy[:, _LAGS - 1]) + 1e-20)
    return float((r / norm).max(axis=1).mean())


@dataclass
class Table:
    """Per window: corpus, speaker ("corpus/id"), clip (index in its set), anger label, raw level (dBFS),
    voicing, and the p of fast and of full."""

    corpus: np.ndarray
    speaker: np.ndarray
    clip: np.ndarray
    label: np.ndarray
    level: np.ndarray
    voicing: np.ndarray
    p_fast: np.ndarray
    p_full: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> Table:
        with np.load(path) as f:
            return cls(**{name: f[name] for name in f.files})


def measure(clips: list[Clip], telephone: bool, fast: AngerModel, full: AngerModel) -> Table:
    """Level, voicing, p_fast and p_full of every non-silent window of the clips."""
    windows = WindowSet(clips)
    level: list[float] = []
    voiced: list[float] = []

    def segments() -> Iterator[np.ndarray]:
        for segment in iter_windows(windows, telephone):
            level.append(audio.dbfs(segment))
            voiced.append(voicing(segment))
            yield segment

    p_fast, p_full = score_segments([fast, full], segments())
    return Table(
        corpus=windows.corpus.astype(str),
        speaker=np.array([f"{clips[i].corpus}/{clips[i].speaker}" for i in windows.clip_index]),
        clip=np.array(windows.clip_index, dtype=int),
        label=windows.labels,
        level=np.array(level),
        voicing=np.array(voiced),
        p_fast=p_fast,
        p_full=p_full,
    )


def logit(p: np.ndarray) -> np.ndarray:
    """logit(p) with p clamped to [1e-7, 1 - 1e-7], as the graph clamps p_fcn."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def head(p_fast: np.ndarray, p_full: np.ndarray, fusion: dict) -> np.ndarray:
    """The YAMNet head of each window, recovered from the two models' p."""
    return ((logit(p_full) - fusion["bias"]) / fusion["scale"] - logit(p_fast)) / fusion["alpha"]


def gated_p(p_fast: np.ndarray, h: np.ndarray, run: np.ndarray, h0: float, fusion: dict) -> np.ndarray:
    """full's p where YAMNet runs, elsewhere the fusion with the head replaced by h0."""
    z = logit(p_fast) + fusion["alpha"] * np.where(run, h, h0)
    return 1.0 / (1.0 + np.exp(-(fusion["scale"] * z + fusion["bias"])))


def speaker_median(level: np.ndarray, speaker: np.ndarray) -> np.ndarray:
    """Each window's baseline: the median level of all its speaker's windows (non-causal)."""
    baseline = np.empty(len(level))
    for name in np.unique(speaker):
        mask = speaker == name
        baseline[mask] = np.median(level[mask])
    return baseline


def clip_order(clip: np.ndarray, seed: int = SEED) -> np.ndarray:
    """Window indices with the clips in a fixed shuffled order, each clip's windows in time order."""
    rank = np.random.default_rng(seed).permutation(int(clip.max()) + 1 if len(clip) else 0)
    return np.lexsort((np.arange(len(clip)), rank[clip]))


def running_median(level: np.ndarray, speaker: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each window's causal baseline: the median level of its speaker's windows up to it (itself included),
    in `order`."""
    baseline = np.empty(len(level))
    seen: dict[str, list[float]] = {}
    for i in order:
        history = seen.setdefault(speaker[i], [])
        history.append(level[i])
        baseline[i] = np.median(history)
    return baseline


def top_fraction(score: np.ndarray, fraction: float) -> np.ndarray:
    """The windows whose score is among the highest `fraction` of all."""
    return score >= np.quantile(score, 1.0 - fraction)


def rules(table: Table, seed: int = SEED) -> dict[str, np.ndarray]:
    """Which windows run YAMNet under each gate, by the gate's name."""
    above = table.level - speaker_median(table.level, table.speaker)
    causal = table.level - running_median(table.level, table.speaker, clip_order(table.clip, seed))
    out = {"full (every window)": np.ones(len(above), bool), "fast (no window)": np.zeros(len(above), bool)}
    out |= {f"level >= baseline {d:+g} dB": above >= d for d in LEVEL_DELTAS}
    out |= {f"level >= causal baseline {d:+g} dB": causal >= d for d in LEVEL_DELTAS}
    out |= {f"voicing >= {t:g}": table.voicing >= t for t in VOICING_THRESHOLDS}
    out |= {
        f"level >= baseline {d:+g} dB and voicing >= {t:g}": (above >= d) & (table.voicing >= t) for d, t in COMBINED
    }
    out |= {f"p_fcn in top {f:.0%}": top_fraction(table.p_fast, f) for f in FCN_FRACTIONS}
    return out


def aurocs(table: Table, p: np.ndarray, pooled: Sequence[str]) -> dict[str, float]:
    """Window AUROC per corpus and pooled over the `pooled` corpora."""
    groups = {c: table.corpus == c for c in dict.fromkeys(table.corpus)} | {"pooled": np.isin(table.corpus, pooled)}
    return {name: metrics.auroc(table.label[mask], p[mask]) for name, mask in groups.items()}


def h0_by_rule(val: Sequence[Table], fusion: dict, seed: int) -> dict[str, float]:
    """Per rule: the median head of the validation windows it leaves out (0 where it leaves none out)."""
    left_out: dict[str, list[np.ndarray]] = {}
    for table in val:
        h = head(table.p_fast, table.p_full, fusion)
        for name, run in rules(table, seed).items():
            left_out.setdefault(name, []).append(h[~run])
    return {name: float(np.median(np.concatenate(hs))) if any(map(len, hs)) else 0.0 for name, hs in left_out.items()}


def evaluate(tables: dict[str, Table], h0: dict[str, float], fusion: dict, pooled: Sequence[str], seed: int) -> list:
    """Per rule: its h0, the share of windows that run YAMNet and the AUROCs per channel, against full and fast."""
    results: dict[str, dict] = {}
    for channel, table in tables.items():
        h = head(table.p_fast, table.p_full, fusion)
        full, fast = aurocs(table, table.p_full, pooled), aurocs(table, table.p_fast, pooled)
        for name, run in rules(table, seed).items():
            auc = aurocs(table, gated_p(table.p_fast, h, run, h0[name], fusion), pooled)
            result = results.setdefault(name, {"rule": name, "h0": h0[name], "within_tolerance": True})
            result[channel] = {
                "yamnet_fraction": float(run.mean()),
                "auroc": auc,
                "minus_full": {k: auc[k] - full[k] for k in auc},
                "minus_fast": {k: auc[k] - fast[k] for k in auc},
            }
            result["within_tolerance"] &= all(full[k] - auc[k] <= TOLERANCE for k in auc)
    return list(results.values())


def cached_table(
    cache: Path, name: str, clips: list[Clip], telephone: bool, fast: AngerModel, full: AngerModel
) -> Table:
    """The table of a clip set on one channel, from the cache (keyed by set, channel and models) or measured."""
    key = hashlib.sha256(fast.path.read_bytes() + full.path.read_bytes()).hexdigest()[:12]
    path = cache / f"{name}_{'telephone' if telephone else 'clean'}_{key}.npz"
    if not path.exists():
        start = time.perf_counter()
        measure(clips, telephone, fast, full).save(path)
        print(f"gate: measured {path.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return Table.load(path)


def voicing_ms(segments: list[np.ndarray], repeats: int = 20) -> float:
    """The median time of `voicing` on one window, in ms."""
    times = []
    for segment in segments * repeats:
        start = time.perf_counter()
        voicing(segment)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate.gate", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, action="append", required=True, help="training corpus manifest")
    parser.add_argument("--dev", type=Path, action="append", default=[], help="dev corpus manifest (every clip)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--cache", type=Path, default=Path("runs/gate"), help="per-window tables (runs/gate)")
    parser.add_argument("--full", default="full", help="the two-branch model (packaged name or path)")
    parser.add_argument("--fast", default="fast", help="its FCN alone (packaged name or path)")
    parser.add_argument("--seed", type=int, default=SEED, help="the causal baseline's clip order")
    return parser.parse_args(argv)


def run(args: argparse.Namespace, command: str) -> dict:
    """Measure (or load) the tables, fix each rule's h0 on the validation speakers, evaluate every rule."""
    fast, full = AngerModel(args.fast, threads=1), AngerModel(args.full, threads=1)
    fusion = full.meta_json("fusion")
    if not isinstance(fusion, dict) or fusion.get("beta", 0.0) != 0.0:
        raise ValueError(f"{full.path} has no fusion metadata with beta 0 (a two-branch model)")
    trained = load_clips(args.manifest, "test")
    test = trained + (load_clips(args.dev, "all") if args.dev else [])
    val = load_clips(args.manifest, "val")
    tables = {ch: cached_table(args.cache, "test", test, tel, fast, full) for ch, tel in CHANNELS.items()}
    val_tables = [cached_table(args.cache, "val", val, tel, fast, full) for tel in CHANNELS.values()]
    pooled = sorted({c.corpus for c in trained})
    h0 = h0_by_rule(val_tables, fusion, args.seed)
    return {
        "command": command,
        "models": {"full": str(full.path.name), "fast": str(fast.path.name)},
        "fusion": {k: fusion[k] for k in ("alpha", "scale", "bias")},
        "pooled": pooled,
        "n_windows": {ch: len(t.label) for ch, t in tables.items()},
        "voicing_ms_per_window": voicing_ms([first_window(c) for c in test[:5]]),
        "tolerance": TOLERANCE,
        "rules": evaluate(tables, h0, fusion, pooled, args.seed),
        "validation_rules": evaluate(dict(zip(CHANNELS, val_tables, strict=True)), h0, fusion, pooled, args.seed),
    }


def first_window(clip: Clip) -> np.ndarray:
    """The first scored window of a clip (for timing)."""
    return next(iter_windows(WindowSet([clip])))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        command = shlex.join(["python", "-m", "tools.evaluate.gate", *(sys.argv[1:] if argv is None else argv)])
        result = run(args, command)
    except (ModelError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    best = [r["rule"] for r in result["rules"] if r["within_tolerance"]]
    print(json.dumps({"n_windows": result["n_windows"], "within_tolerance": best}))


if __name__ == "__main__":
    main()
