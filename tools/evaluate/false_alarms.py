"""False alarms per hour of calm speech, and how many angry passages are caught and how soon, on synthetic calls
of held-out speakers, for a grid of event rules; the detector's defaults are chosen from it.

    python -m tools.evaluate.false_alarms --model fp32 --json docs/false-alarms.json [--cache DIR]

Calls (`tools.evaluate.calls`) are built from the validation speakers of the corpora in `--data`
(`tools.manifest` splits): calm calls, and the same calls with one angry passage of 5-20 s inserted, at
16 kHz and through the simulated telephone channel. Each call's windows are scored once; then every rule of
the grid (threshold x patience x smoothing x hold, hysteresis 0.1) is run over the cached scores by the live
detector's own event logic (`anger_stream.tracker.Trackers`, all calls at once). A false alarm is an
`anger_start` in a calm call, counted per hour of its non-silent speech (scored windows x hop, as `anger-stream
calibrate` counts it). A passage is caught when an `anger_start` comes from a window that overlaps it (or a
segment is open as it begins: delay 0); its delay runs from the passage's first sample to that
`anger_start`'s `t`.

The rule chosen: among the rules with at most MAX_FA_PER_HOUR false alarms per hour on both channels, the one
that catches the largest share of passages within CATCH_S seconds (mean of the channels); ties go to fewer
segments per passage, then the shorter hold, no smoothing, the lower patience. Smoothing (the mean logit of
the last k windows before the threshold) is part of the grid only here: the detector has it only if a
smoothed rule wins. The chosen rule is then measured on the test speakers, per corpus. Writes the JSON and
prints the README's table (markdown) on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from anger_stream import audio
from anger_stream.detector import AngerDetector, DetectorConfig
from anger_stream.events import AngerEnd, AngerStart
from anger_stream.model import model_path
from anger_stream.tracker import Trackers
from tools.evaluate.calls import CHANNELS, ScoredCalls, build_calls, score_calls
from tools.manifest import SHARED, load_manifest

THRESHOLDS = tuple(round(0.5 + 0.02 * i, 2) for i in range(25))
PATIENCES = (1, 2, 3)
SMOOTHING = (1, 2, 3)
HOLDS = (0.0, 0.6, 1.2, 1.8, 2.4, 3.0, 4.2, 6.0)
MAX_FA_PER_HOUR = 6.0
CATCH_S = 3.0
SEGMENTS_SLACK = 0.05
"""A hold is worth its delay at the end of a segment only while it merges more than this many segments per
caught passage."""
CORPORA = ("ravdess", "ased", "nemo", "emodb")
CACHE_VERSION = "1"


def smooth(p: np.ndarray, k: int) -> np.ndarray:
    """The mean logit of each window and the k-1 before it (silent ones left out), as a probability; silent
    windows stay NaN."""
    if k == 1:
        return p
    logit = np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))
    shifted = np.full((k, *p.shape), np.nan)
    for j in range(k):
        shifted[j, :, j:] = logit[:, : p.shape[1] - j]
    scored = ~np.isnan(shifted)
    mean = np.where(scored, shifted, 0.0).sum(axis=0) / np.maximum(scored.sum(axis=0), 1)
    return np.where(np.isnan(p), np.nan, 1 / (1 + np.exp(-mean)))


def run_rule(scored: ScoredCalls, config: DetectorConfig, k: int = 1) -> list[list[tuple[float, float]]]:
    """Each call's anger segments (start t, end t) under `config` with smoothing k, an open one ending with
    the call; by the live detector's event logic, all calls stepped together."""
    q = smooth(scored.p, k)
    n = len(scored.calls)
    trackers = Trackers(config)
    trackers.grow(n)
    slots = np.arange(n)
    segments: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    none = np.full(n, np.nan)
    for r in range(q.shape[1]):
        sel = scored.lengths > r
        s = slots[sel]
        for i, e in trackers.step(s, q[sel, r], none[sel], scored.t_start[sel, r], scored.t_end[sel, r]):
            if isinstance(e, AngerStart):
                segments[s[i]].append((e.t, np.inf))
            elif isinstance(e, AngerEnd):
                segments[s[i]][-1] = (segments[s[i]][-1][0], e.t)
    for c in np.flatnonzero(trackers.active):
        end = len(scored.calls[c].audio) / audio.SAMPLE_RATE
        segments[c][-1] = (segments[c][-1][0], end)
    return segments


def measure(scored: ScoredCalls, segments: list[list[tuple[float, float]]], window_s: float) -> dict[str, Any]:
    """False alarms per hour of calm speech; share of passages caught, within CATCH_S, median delay, segments
    per caught passage, and how long after a passage its last segment ended (median)."""
    calm = [i for i, c in enumerate(scored.calls) if c.passage is None]
    false_alarms = sum(len(segments[i]) for i in calm)
    hours = scored.calm_speech_hours
    delays, counts, tails = [], [], []
    passages = [(i, c.passage) for i, c in enumerate(scored.calls) if c.passage is not None]
    for i, (a, b) in passages:
        inside = [(s, e) for s, e in segments[i] if a < s <= b + window_s]
        open_at_start = [(s, e) for s, e in segments[i] if s <= a < e]
        if not inside and not open_at_start:
            continue
        delays.append(0.0 if open_at_start else inside[0][0] - a)
        counts.append(len(inside) + len(open_at_start))
        tails.append((inside or open_at_start)[-1][1] - b)
    n = len(passages)
    return {
        "false_alarms": false_alarms,
        "calm_speech_hours": round(hours, 4),
        "false_alarms_per_hour": round(false_alarms / hours, 2) if hours else None,
        "passages": n,
        "caught": round(len(delays) / n, 4) if n else None,
        "caught_within_3s": round(sum(d <= CATCH_S for d in delays) / n, 4) if n else None,
        "median_delay_s": round(float(np.median(delays)), 2) if delays else None,
        "segments_per_caught": round(float(np.mean(counts)), 3) if counts else None,
        "median_end_after_passage_s": round(float(np.median(tails)), 2) if tails else None,
    }


def rule_config(rule: dict[str, Any], base: DetectorConfig) -> DetectorConfig:
    return replace(base, threshold=rule["threshold"], patience=rule["patience"], hold_s=rule["hold_s"])


def sweep(scored: dict[str, ScoredCalls], base: DetectorConfig) -> list[dict[str, Any]]:
    """Every rule of the grid measured on every channel."""
    rows = []
    for threshold, patience, k, hold in itertools.product(THRESHOLDS, PATIENCES, SMOOTHING, HOLDS):
        rule = {"threshold": threshold, "patience": patience, "smooth": k, "hold_s": hold}
        config = rule_config(rule, base)
        rows.append(rule | {ch: measure(s, run_rule(s, config, k), base.window_s) for ch, s in scored.items()})
    return rows


def _mean(row: dict[str, Any], key: str) -> float:
    return float(np.mean([row[ch][key] or 0.0 for ch in CHANNELS]))


def choose(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule chosen by the module's criterion (ValueError if no rule meets the false-alarm bound): the most
    passages caught within CATCH_S (ties: fewer segments per passage, no smoothing, lower patience and
    threshold); then, for that threshold, patience and smoothing, the shortest hold that comes within
    SEGMENTS_SLACK segments per caught passage of the fewest any hold gives."""
    feasible = [r for r in rows if all(r[ch]["false_alarms_per_hour"] <= MAX_FA_PER_HOUR for ch in CHANNELS)]
    if not feasible:
        raise ValueError(f"no rule of the grid gives at most {MAX_FA_PER_HOUR} false alarms per hour")
    best = min(
        feasible,
        key=lambda r: (
            -_mean(r, "caught_within_3s"),
            _mean(r, "segments_per_caught"),
            r["smooth"],
            r["patience"],
            r["threshold"],
        ),
    )
    same = [r for r in feasible if all(r[k] == best[k] for k in ("threshold", "patience", "smooth"))]
    fewest = min(_mean(r, "segments_per_caught") for r in same)
    return min(
        (r for r in same if _mean(r, "segments_per_caught") <= fewest + SEGMENTS_SLACK), key=lambda r: r["hold_s"]
    )


def scored_calls(
    split: str, data: Path, detector: AngerDetector, seed: int, cache: Path | None
) -> dict[str, ScoredCalls]:
    """The calls of one split's speakers, scored through each channel (from the cache when there)."""
    manifests = [data / corpus / "manifest.csv" for corpus in CORPORA if (data / corpus).is_dir()]
    clips = [c for m in manifests for c in load_manifest(m, split)]
    if not clips:
        raise ValueError(f"no {split} clips in {data}")
    calls = build_calls(clips, seed)
    out = {}
    digest = hashlib.sha256(detector.model.path.read_bytes()).hexdigest()[:16]
    for channel in CHANNELS:
        file = cache / f"{digest}-{split}-{channel}-{seed}-v{CACHE_VERSION}.npz" if cache else None
        if file is not None and file.is_file():
            z = np.load(file)
            out[channel] = ScoredCalls(calls, z["p"], z["t_start"], z["t_end"], z["lengths"])
            continue
        out[channel] = s = score_calls(calls, detector, channel)
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            np.savez(file, p=s.p, t_start=s.t_start, t_end=s.t_end, lengths=s.lengths)
    return out


def per_corpus(scored: dict[str, ScoredCalls], rule: dict[str, Any], base: DetectorConfig) -> dict[str, Any]:
    """The chosen rule measured on each channel, pooled and per corpus."""
    config = rule_config(rule, base)
    out: dict[str, Any] = {}
    for channel, s in scored.items():
        segments = run_rule(s, config, rule["smooth"])
        corpus = np.array([c.corpus for c in s.calls])
        out[channel] = {"all": measure(s, segments, base.window_s)}
        for name in dict.fromkeys(corpus.tolist()):
            keep = corpus == name
            kept = [g for g, k in zip(segments, keep, strict=True) if k]
            out[channel][name] = measure(s.subset(keep), kept, base.window_s)
    return out


def describe(scored: dict[str, ScoredCalls]) -> dict[str, Any]:
    s = next(iter(scored.values()))
    return {
        "speakers": sorted({f"{c.corpus}:{c.speaker}" for c in s.calls}),
        "calm_calls": sum(c.passage is None for c in s.calls),
        "angry_calls": sum(c.passage is not None for c in s.calls),
        "audio_hours": round(sum(len(c.audio) for c in s.calls) / audio.SAMPLE_RATE / 3600, 3),
    }


def _shown(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(result: dict[str, Any]) -> str:
    """The README table: the chosen rule on the validation speakers (pooled) and the test speakers per corpus."""
    head = (
        "| speakers | channel | false alarms / hour of calm speech | angry passages | caught within 3 s | caught "
        "| median delay | segments per caught passage |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    names = {"16k": "16 kHz", "telephone": "telephone"}
    blocks = [("validation, all", {ch: v["all"] for ch, v in result["validation"]["chosen"].items()})]
    test = result["test"]["chosen"]
    for corpus in [c for c in (*CORPORA, "all") if c in test["16k"]]:
        blocks.append((f"test, {corpus}", {ch: test[ch][corpus] for ch in test}))
    for label, by_channel in blocks:
        for ch, m in by_channel.items():
            cells = [
                label,
                names[ch],
                f"{m['false_alarms_per_hour']:.1f} ({m['false_alarms']} in {m['calm_speech_hours']:.2f} h)",
                str(m["passages"]),
                _shown(m["caught_within_3s"], "{:.0%}"),
                _shown(m["caught"], "{:.0%}"),
                _shown(m["median_delay_s"], "{:.1f} s"),
                _shown(m["segments_per_caught"], "{:.2f}"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def neighbours(rows: list[dict[str, Any]], chosen: dict[str, Any]) -> list[dict[str, Any]]:
    """Grid rows next to the chosen one: its threshold +-0.04 with every patience and hold, no smoothing, and
    the chosen threshold with each smoothing."""
    same = ("threshold", "patience", "hold_s")
    return [
        r
        for r in rows
        if abs(r["threshold"] - chosen["threshold"]) < 0.045
        and r["smooth"] == chosen["smooth"]
        or all(r[k] == chosen[k] for k in same)
    ]


GRID_MEASURES = ("false_alarms", "false_alarms_per_hour", "caught", "caught_within_3s", "median_delay_s")


def compact(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid as a table: the rule, then a few measures per channel."""
    rule = ["threshold", "patience", "smooth", "hold_s"]
    columns = rule + [f"{ch}:{m}" for ch in CHANNELS for m in (*GRID_MEASURES, "segments_per_caught")]
    table = [
        [r[k] for k in rule] + [r[ch][m] for ch in CHANNELS for m in (*GRID_MEASURES, "segments_per_caught")]
        for r in rows
    ]
    return {"columns": columns, "rows": table}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.evaluate.false_alarms", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="full", help="ONNX model path, or a packaged model's name")
    parser.add_argument("--data", type=Path, default=SHARED / "data", help="folder of the corpora (manifest.csv each)")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    parser.add_argument("--cache", type=Path, help="keep each split's and channel's window scores here")
    parser.add_argument("--seed", type=int, default=0, help="for the calls' order, pauses and passages")
    args = parser.parse_args(argv)
    base = DetectorConfig(hysteresis=0.1)
    detector = AngerDetector(args.model, config=base)
    try:
        validation = scored_calls("val", args.data, detector, args.seed, args.cache)
        rows = sweep(validation, base)
        chosen = choose(rows)
        test = scored_calls("test", args.data, detector, args.seed, args.cache)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    rule = {k: chosen[k] for k in ("threshold", "patience", "smooth", "hold_s")}
    command = ["python", "-m", "tools.evaluate.false_alarms", *(sys.argv[1:] if argv is None else argv)]
    result = {
        "command": shlex.join(command),
        "model": args.model,
        "model_file": model_path(args.model).name,
        "seed": args.seed,
        "hysteresis": base.hysteresis,
        "min_dbfs": base.min_dbfs,
        "max_false_alarms_per_hour": MAX_FA_PER_HOUR,
        "catch_within_s": CATCH_S,
        "chosen": rule,
        "validation": describe(validation) | {"chosen": per_corpus(validation, chosen, base)},
        "test": describe(test) | {"chosen": per_corpus(test, chosen, base)},
        "near_chosen": neighbours(rows, chosen),
        "grid": compact(rows),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=None, separators=(",", ":")) + "\n")
    print(f"chosen: {rule}", file=sys.stderr)
    print(markdown(result))


if __name__ == "__main__":
    main()
