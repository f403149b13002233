"""`anger-stream calibrate`: choose the threshold on recordings of the deployment's own channel.

Every recording is scored with the live detector's windows (`AngerDetector.analyse`). Without labels all of
them are taken as non-angry reference speech; with a labels manifest the angry ones give the AUROC and the
true-positive rates too. The threshold for a target false-alarm rate per window is read off the reference
windows, and false alarms per hour of non-silent speech (scored windows times the hop) are counted by running the
live detector's event logic (`EventTracker`: threshold, patience, hysteresis, hold) over each reference
recording's windows: the measure of the README's "Will it work on my calls?" (`tools.evaluate.false_alarms`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from . import channels, metrics, options
from .detector import AngerDetector, DetectorConfig, EventTracker
from .events import AngerStart, Window
from .files import check_input, open_output, shown
from .model import is_packaged
from .sources import InputError
from .sources.file import read_recording

THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""The rows of the threshold table: 0.5 to 0.95."""
PATIENCES = (1, 2)
DEFAULT_TARGET_FPR = 0.05


@dataclass(frozen=True)
class Stream:
    """The windows of one scored stream (a recording, or one channel of it) and its label (None: none given)."""

    path: str
    channel: int | None
    windows: list[Window]
    anger: int | None = None

    @property
    def p(self) -> np.ndarray:
        """p(anger) of the scored (non-silent) windows."""
        return np.array([w.p for w in self.windows if w.p is not None], dtype=np.float64)


def read_labels(manifest: Path) -> dict[str, tuple[int, str | None]]:
    """(anger, speaker) by real path from a labels manifest: a CSV with a header and the columns `path`
    (relative to the manifest's folder, or absolute) and `anger` (1 or 0), optionally `speaker` (kept as a
    string); other columns are ignored. Raises ValueError with the line at fault."""
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"path", "anger"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{manifest} has no column {', '.join(sorted(missing))} (needs path and anger)")
        labels: dict[str, tuple[int, str | None]] = {}
        for row in reader:
            if row["anger"] not in ("0", "1"):
                raise ValueError(f"{manifest} line {reader.line_num}: anger must be 0 or 1, not {row['anger']!r}")
            path = os.path.realpath(manifest.parent / row["path"])
            labels[path] = (int(row["anger"]), row.get("speaker"))
    if not labels:
        raise ValueError(f"{manifest} lists no recordings")
    return labels


def score_recordings(
    paths: Iterable[str],
    detector: AngerDetector,
    mode: str = "mix",
    labels: dict[str, tuple[int, str | None]] | None = None,
    advance: Callable[[float], None] = lambda seconds: None,
    warn: Callable[[str], None] = lambda message: None,
) -> list[Stream]:
    """Score each recording (each channel of it with `mode` 'split'); unusable files are reported through
    `warn` and skipped."""
    streams = []
    for path in paths:
        try:
            check_input(path)
            recording = read_recording(path)
        except InputError as exc:
            warn(str(exc))
            advance(0.0)
            continue
        if recording.warning:
            warn(f"{path}: {recording.warning}")
        anger = None if labels is None else labels[os.path.realpath(path)][0]
        for channel, samples in channels.select(recording.samples, mode):
            events = detector.analyse(samples, recording.rate)
            windows = [e for e in events if isinstance(e, Window)]
            streams.append(Stream(path, channel, windows, anger))
        advance(recording.duration)
    return streams


def count_starts(windows: list[Window], config: DetectorConfig) -> int:
    """Anger segments the live detector's event logic starts on these windows with `config`."""
    tracker = EventTracker(config)
    starts = 0
    for w in windows:
        window = replace(w, angry=w.p is not None and w.p >= config.threshold)
        starts += sum(isinstance(e, AngerStart) for e in tracker.update(window))
    return starts


def threshold_for_rate(reference: np.ndarray, target: float) -> float:
    """The lowest threshold, on a 0.001 grid, at which at most `target` of the reference windows score at or
    above it."""
    ranked = np.sort(reference)[::-1]
    allowed = math.floor(target * len(ranked) + 1e-9)  # windows allowed at or above the threshold
    if allowed >= len(ranked):
        return 0.0
    return min(math.floor(ranked[allowed] * 1000 + 1e-9) / 1000 + 0.001, 1.0)


def _rate(scores: np.ndarray, threshold: float) -> float | None:
    return round(float(np.mean(scores >= threshold)), 4) if len(scores) else None


def operating_point(streams: list[Stream], threshold: float, config: DetectorConfig) -> dict[str, Any]:
    """Window false-alarm rate, true-positive rate (labelled angry windows, if any) and false alarms per hour
    of reference speech with patience 1 and 2 (the other settings as in `config`), at one threshold."""
    reference = [s for s in streams if not s.anger]
    negatives = np.concatenate([s.p for s in reference])
    positives = np.concatenate([np.zeros(0)] + [s.p for s in streams if s.anger])
    hours = len(negatives) * config.hop_s / 3600
    per_hour = {}
    for patience in PATIENCES:
        rule = replace(config, threshold=threshold, patience=patience)
        starts = sum(count_starts(s.windows, rule) for s in reference)
        per_hour[f"patience_{patience}"] = round(starts / hours, 2)
    return {
        "threshold": threshold,
        "window_fpr": _rate(negatives, threshold),
        "tpr": _rate(positives, threshold),
        "false_alarms_per_hour": per_hour,
    }


def calibrate(streams: list[Stream], target_fpr: float, config: DetectorConfig) -> dict[str, Any]:
    """The calibration result (the JSON the command prints): threshold for `target_fpr`, its operating point,
    the threshold table, and with labels the AUROC with its DeLong 95% interval. ValueError if there is no
    reference speech."""
    reference = [s for s in streams if not s.anger]
    negatives = np.concatenate([np.zeros(0)] + [s.p for s in reference])
    if not len(negatives):
        raise ValueError("no non-angry speech to calibrate on (every window silent, or every recording angry)")
    positives = np.concatenate([np.zeros(0)] + [s.p for s in streams if s.anger])
    threshold = threshold_for_rate(negatives, target_fpr)
    result: dict[str, Any] = {
        "recordings": len({s.path for s in streams}),
        "streams": len(streams),
        "reference_windows": len(negatives),
        "angry_windows": len(positives),
        "silent_windows": sum(len(s.windows) for s in streams) - len(negatives) - len(positives),
        "reference_speech_minutes": round(len(negatives) * config.hop_s / 60, 2),
        "hold_s": config.hold_s,
        "target_fpr": target_fpr,
        **operating_point(streams, threshold, config),
        "auroc": None,
        "auroc_ci95": None,
        "table": [operating_point(streams, t, config) for t in THRESHOLDS],
    }
    if len(positives):
        y = np.concatenate([np.zeros(len(negatives), int), np.ones(len(positives), int)])
        auc, lo, hi = metrics.auroc_ci(y, np.concatenate([negatives, positives]))
        result["auroc"], result["auroc_ci95"] = round(auc, 4), [round(lo, 4), round(hi, 4)]
    return result


def settings_file(result: dict[str, Any], config: DetectorConfig, model: str | None) -> dict[str, Any]:
    """The settings file (`--config` of the other commands): the calibrated threshold and the settings used."""
    out = {
        "threshold": result["threshold"],
        "patience": config.patience,
        "hysteresis": config.hysteresis,
        "hold": config.hold_s,
    }
    out["min_dbfs"] = config.min_dbfs
    if model is not None:
        out["model"] = model if is_packaged(model) else str(Path(model).absolute())
    return out


def print_table(result: dict[str, Any]) -> None:
    """The result for people, on stderr."""
    from rich.console import Console
    from rich.table import Table

    labelled = result["auroc"] is not None
    title = f"{result['recordings']} recordings, {result['reference_speech_minutes']} min of non-angry speech" + (
        f", AUROC {result['auroc']:.3f} (95% CI {result['auroc_ci95'][0]:.3f}-{result['auroc_ci95'][1]:.3f})"
        if labelled
        else ""
    )
    table = Table(title=title)
    for column in ("threshold", "window FPR", *(["TPR"] if labelled else []), "FA/h p1", "FA/h p2"):
        table.add_column(column, justify="right")
    for row in [*result["table"], result]:
        fa = row["false_alarms_per_hour"]
        cells = [f"{row['threshold']:.3f}", f"{row['window_fpr']:.3f}"]
        cells += [f"{row['tpr']:.3f}"] if labelled else []
        cells += [f"{fa['patience_1']:.1f}", f"{fa['patience_2']:.1f}"]
        style = "bold" if row is result else None
        table.add_row(*cells, style=style, end_section=row is result["table"][-1])
    console = Console(stderr=True)
    console.print(table)
    console.print(
        f"threshold for a window false-alarm rate of at most {result['target_fpr']:g}: "
        f"[bold]{result['threshold']:.3f}[/bold]"
    )


def calibrate_command(
    paths: Annotated[
        list[str] | None,
        typer.Argument(metavar="PATH", help="Recordings of your channel: files, folders (recursive) or quoted globs."),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            metavar="CSV", help="CSV with path, anger (0/1) and optionally speaker: AUROC and true-positive rates too."
        ),
    ] = None,
    target_fpr: Annotated[
        float, typer.Option(metavar="RATE", help="Share of non-angry windows allowed at or above the threshold.")
    ] = DEFAULT_TARGET_FPR,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", metavar="FILE", help="Write a settings file for --config.")
    ] = None,
    channel_mode: Annotated[
        str,
        typer.Option("--channels", metavar="MODE", help="mix: channels averaged; split: each channel its own stream."),
    ] = "mix",
    model: options.Model = None,
    min_dbfs: options.MinDbfs = None,
    patience: options.Patience = None,
    hysteresis: options.Hysteresis = None,
    hold: options.Hold = None,
    quiet: options.Quiet = False,
) -> None:
    """Find the threshold for a target false-alarm rate on recordings of your own channel.

    A table on stderr, the result as JSON on stdout, and with --out a settings file the other commands load
    with --config. The silence gate, model, patience, hysteresis and hold given are used for scoring and counting,
    and written to that file.
    """
    from .batch import find_recordings, progress_bar
    from .model import ModelError
    from .stdio import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, OutputError, emit_line, fail, warn

    if not 0.0 < target_fpr < 1.0:
        fail("--target-fpr must be above 0 and below 1", EXIT_USAGE)
    if channel_mode not in channels.MODES:
        fail(f"--channels must be one of {', '.join(channels.MODES)}", EXIT_USAGE)
    chosen = options.detector_settings(
        None, model=model, min_dbfs=min_dbfs, patience=patience, hysteresis=hysteresis, hold=hold
    )
    config, model = chosen.config, chosen.model
    try:
        if labels is not None:
            check_input(labels)
        label_map = read_labels(labels) if labels is not None else None
    except InputError as exc:
        fail(f"--labels: {exc}", EXIT_USAGE)
    except (ValueError, OSError) as exc:
        fail(str(exc), EXIT_USAGE)
    if not paths and label_map is None:
        fail("give recordings to calibrate on (PATHS), or --labels", EXIT_USAGE)
    try:
        recordings = find_recordings(paths, warn) if paths else sorted(label_map or ())
    except InputError as exc:
        fail(str(exc), EXIT_INPUT)
    if label_map is not None:
        unlabelled = [p for p in recordings if os.path.realpath(p) not in label_map]
        if unlabelled:
            fail(f"{unlabelled[0]} is not in {labels} ({len(unlabelled)} recordings without a label)", EXIT_USAGE)
    if not recordings:
        fail(f"no audio files found in {' '.join(paths or [])}", EXIT_INPUT)
    try:
        detector = AngerDetector(model, config=config)
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)

    if quiet:
        streams = score_recordings(recordings, detector, channel_mode, label_map, warn=warn)
    else:
        with progress_bar(len(recordings), "calibrate") as advance:
            streams = score_recordings(recordings, detector, channel_mode, label_map, advance, warn)
    try:
        result = calibrate(streams, target_fpr, config)
    except ValueError as exc:
        fail(str(exc), EXIT_INPUT)
    result["settings"] = settings_file(result, config, model)
    if not quiet:
        print_table(result)
    if out is not None:
        try:
            with open_output(out, "replace") as sink:
                sink.write((json.dumps(result["settings"], indent=2) + "\n").encode())
        except OutputError as exc:
            fail(str(exc), EXIT_OUTPUT)
        except OSError as exc:
            fail(f"cannot write {shown(out)}: {exc.strerror or exc}", EXIT_OUTPUT)
    emit_line(json.dumps(result, separators=(",", ":"), allow_nan=False))
