"""`anger-stream report`: one recording's timeline as a PNG a supervisor reads at a glance.

Top: the level in dBFS per 50 ms frame, with the silence gate. Below: p(anger) per window at the window's
centre, the threshold, and the anger segments (shaded on both) from the live detector's event logic; with
`--channels split` (or a split batch line) one level curve and one p(anger) lane per channel.
matplotlib is imported inside the function (Agg canvas, no pyplot).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, BinaryIO

import numpy as np
import typer

from . import audio, channels, options
from .batch import SETTINGS, read_results
from .batch import record as make_record
from .detector import AngerDetector, DetectorConfig, window_bounds
from .files import check_input, open_output, shown
from .sources import InputError

FRAME_S = 0.05
SIZE_PX = (1400, 600)
"""Figure size with one p(anger) lane; each further lane (channel) adds LANE_PX."""
LANE_PX = 300
DPI = 100


def frame_levels(samples: np.ndarray, rate: int, frame_s: float = FRAME_S) -> tuple[np.ndarray, np.ndarray]:
    """(frame centre times, dBFS) of consecutive frames of a mono signal (the last partial frame dropped)."""
    n = max(round(frame_s * rate), 1)
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    times = (np.arange(len(frames)) + 0.5) * n / rate
    return times, np.atleast_1d(audio.dbfs(frames)) if len(frames) else np.zeros(0)


def window_centres(n_windows: int, duration: float, config: DetectorConfig) -> np.ndarray:
    """Centre time of each of a recording's first n_windows windows (`window_bounds`: the last ones are cut
    short by the end of the recording)."""
    n = round(duration * audio.SAMPLE_RATE)
    n = max(n, (n_windows - 1) * config.hop + config.min_audio)  # a duration rounded to 1 ms may lose a sample
    bounds = np.array(window_bounds(n, config)[:n_windows], dtype=np.float64).reshape(-1, 2)
    return bounds.mean(axis=1) / audio.SAMPLE_RATE


def _clock(t: float, _pos: object = None) -> str:
    """Minutes and seconds: 3:07."""
    return f"{int(t // 60)}:{int(t % 60):02d}"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 60 else _clock(seconds)


def figure_size(lanes: int) -> tuple[int, int]:
    """Pixels (width, height) of a figure with this many p(anger) lanes."""
    return SIZE_PX[0], SIZE_PX[1] + LANE_PX * (lanes - 1)


def lanes(record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, summary) per p(anger) lane: the record itself, or one per channel of a split record."""
    if record.get("channels") is None:
        return [("p(anger)", record)]
    return [(f"channel {c['channel']}", c) for c in record["channels"]]


def draw(record: dict[str, Any], samples: np.ndarray, rate: int, config: DetectorConfig, out: BinaryIO) -> None:
    """Write the figure of one batch record (and its audio, for the level) to `out` (PNG).

    `samples` are the recording's (frames, channels); a split record gets one level curve and one p(anger)
    lane per channel.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    threshold = config.threshold
    duration = record["duration"]
    rows = lanes(record)
    split = record.get("channels") is not None
    width, height = figure_size(len(rows))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, layout="constrained")
    level_ax, *p_axes = fig.subplots(1 + len(rows), 1, sharex=True, height_ratios=(2, *[3] * len(rows)))

    x = np.asarray(samples).reshape(len(samples), -1)
    curves = [(f"channel {c}", x[:, c]) for c in range(x.shape[1])] if split else [("", audio.mixdown(x))]
    levels = [(label, *frame_levels(signal, rate)) for label, signal in curves]
    floor = max(min(min(lv.min(initial=0.0) for _, _, lv in levels), config.min_dbfs) - 5, -100)
    for label, times, lv in levels:  # silence at the bottom
        colour = None if split else "0.35"
        level_ax.plot(times, np.maximum(lv, floor), linewidth=0.8, color=colour, label=label or None)
    level_ax.axhline(config.min_dbfs, color="0.6", linestyle=":", linewidth=1, label="silence gate")
    level_ax.set_ylim(floor, 0)
    level_ax.set_ylabel("level (dBFS)")
    level_ax.legend(loc="lower right", fontsize="small")

    for p_ax, (label, lane) in zip(p_axes, rows, strict=True):
        p = np.array([np.nan if v is None else v for v in lane["windows"]], dtype=float)
        marker = "o" if len(p) <= 300 else None  # dots only while they stay apart
        centres = window_centres(len(p), duration, config)
        p_ax.plot(centres, p, color="tab:blue", marker=marker, markersize=3, label="p(anger)")
        p_ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        for i, (t0, t1) in enumerate(lane["segments"]):
            if not split:  # the level panel is shared by the channels' lanes
                level_ax.axvspan(t0, t1, color="tab:red", alpha=0.18, linewidth=0)
            p_ax.axvspan(t0, t1, color="tab:red", alpha=0.18, linewidth=0, label=None if i else "anger")
        p_ax.set_ylim(0, 1)
        p_ax.set_ylabel(f"p(anger), {label}" if split else label)
        p_ax.legend(loc="upper right", fontsize="small")
    last = p_axes[-1]
    last.set_xlim(0, duration)
    if duration < 60:
        last.set_xlabel("time (s)")
    else:
        last.set_xlabel("time (m:ss)")
        step = next((s for s in (10, 15, 30, 60, 120, 300, 600, 900, 1800) if duration / s <= 12), 3600)
        last.xaxis.set_major_locator(MultipleLocator(step))
        last.xaxis.set_major_formatter(FuncFormatter(_clock))
    for ax in (level_ax, *p_axes):
        ax.grid(alpha=0.3)

    fig.suptitle(summary_line(record), fontsize="large")
    fig.savefig(out, format="png")


def _lane_summary(lane: dict[str, Any]) -> str:
    """E.g. '14% of speech angry, peak p 0.93, 2 anger segments'."""
    share, peak, n = lane["angry_share"], lane["p_max"], len(lane["segments"])
    if share is not None:
        speech = f"{share:.0%} of speech angry, peak p {peak:.2f}"
    else:
        speech = "silent: no window scored" if lane["windows"] else "too short to score"
    return f"{speech}, {n} anger segment{'s' * (n != 1)}"


def summary_line(record: dict[str, Any]) -> str:
    """E.g. 'call.wav: 3:12, 14% of speech angry, peak p 0.93, 2 anger segments'; per channel when split."""
    if record.get("channels") is None:
        text = _lane_summary(record)
    else:
        text = "; ".join(f"{label}: {_lane_summary(lane)}" for label, lane in lanes(record))
    return f"{shown(Path(record['path']).name)}: {_duration(record['duration'])}, {text}"


def find_record(results: Path, wanted: str) -> dict[str, Any]:
    """The line of a batch results file for a recording: its full path, or a unique file name or suffix."""
    check_input(results)
    try:
        data = results.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {shown(results)}: {exc.strerror or exc}") from None
    records = read_results(data, shown(results))
    exact = [r for r in records if r["path"] == str(Path(wanted).absolute())]
    matches = exact or [r for r in records if r["path"].endswith("/" + wanted.lstrip("/"))]
    if len(matches) != 1:
        found = "no recording" if not matches else f"{len(matches)} recordings"
        raise InputError(f"{found} in {shown(results)} match {shown(wanted)}")
    return matches[-1]


def report(
    source: Annotated[Path, typer.Argument(metavar="FILE", help="A recording, or batch results (.jsonl) with --path.")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.png", help="PNG file to write.")],
    path: Annotated[
        str | None, typer.Option(metavar="PATH", help="With batch results: the recording to draw (path or name).")
    ] = None,
    threshold: options.Threshold = None,
    model: options.Model = None,
    min_dbfs: options.MinDbfs = None,
    patience: options.Patience = None,
    hysteresis: options.Hysteresis = None,
    hold: options.Hold = None,
    config_file: options.ConfigFile = None,
    channel_mode: Annotated[
        str | None,
        typer.Option(
            "--channels",
            metavar="MODE",
            help="mix: the channels averaged (default); split: one lane per channel (calls).",
        ),
    ] = None,
) -> None:
    """Draw one recording's timeline (level, p(anger), threshold, anger segments) as a PNG.

    From batch results, the recording is drawn with the settings batch scored it with.
    """
    from .model import ModelError
    from .sources.file import read_recording
    from .stdio import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, OutputError, fail, note, require, warn

    require("matplotlib", "batch", "report")
    if out.suffix.lower() != ".png":
        fail(f"--out {shown(out)}: report draws a PNG; name the file .png", EXIT_USAGE)
    detector_options = {
        "threshold": threshold,
        "model": model,
        "min_dbfs": min_dbfs,
        "patience": patience,
        "hysteresis": hysteresis,
        "hold": hold,
    }
    try:
        if source.suffix == ".jsonl":
            given = [v for v in (*detector_options.values(), config_file, channel_mode) if v is not None]
            if path is None or given:
                fail("batch results need --path and take no detector options or --channels", EXIT_USAGE)
            record = find_record(source, path)
            if record["error"] is not None:
                fail(f"{shown(record['path'])} was not scored: {record['error']}", EXIT_INPUT)
            recording = read_recording(record["path"])
            config = DetectorConfig(**{name: record[name] for name in SETTINGS if name in record})
        else:
            if path is not None:
                fail("--path is for batch results (.jsonl)", EXIT_USAGE)
            settings = options.detector_settings(config_file, **detector_options)
            config = settings.config
            mode = channel_mode or "mix"
            if mode not in channels.MODES:
                fail(f"--channels must be one of {', '.join(channels.MODES)}", EXIT_USAGE)
            recording = read_recording(source)
            record = make_record(str(source), recording, AngerDetector(settings.model, config=config), mode)
        if recording.warning:
            warn(f"{shown(record['path'])}: {recording.warning}")
        with open_output(out, "replace") as sink:
            draw(record, recording.samples, recording.rate, config, sink)
    except InputError as exc:
        fail(str(exc), EXIT_INPUT)
    except (KeyError, TypeError, ValueError) as exc:  # a results line with a missing or malformed field
        if source.suffix != ".jsonl":
            raise
        fail(f"{shown(source)}: the line of {shown(path or '')} is not a usable batch record ({exc!r})", EXIT_INPUT)
    except OutputError as exc:
        fail(str(exc), EXIT_OUTPUT)
    except OSError as exc:
        fail(f"cannot write {shown(out)}: {exc.strerror or exc}", EXIT_OUTPUT)
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)
    width, height = figure_size(len(lanes(record)))
    note(f"wrote {shown(out)} ({width}x{height} px): {summary_line(record)}")
