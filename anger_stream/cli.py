"""The `anger-stream` command: wires a source (microphone, file, stdin), the detector core and the sinks,
and the subcommands, which live in their own modules.

stdout carries JSON lines only; everything for people (the meter, errors) goes to stderr. Exit codes: stdio.py.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from . import audio
from .batch import batch
from .calibrate import calibrate_command
from .detector import AngerDetector
from .events import AngerStart, Event, Status, Window, to_json
from .model import ModelError
from .report import report
from .serve.command import serve
from .sources import DeviceError, InputError
from .stdio import (
    EXIT_DEVICE,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_MODEL,
    EXIT_OUTPUT,
    OutputError,
    StdoutClosed,
    emit_line,
    fail,
    mute_native_stderr,
)

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Real-time anger detection in speech: JSON lines on stdout, a live meter on stderr.",
)
for command in (batch, report, serve):
    app.command()(command)
app.command("calibrate")(calibrate_command)


class Stop(Exception):
    """SIGTERM: end the stream cleanly, as Ctrl-C does."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Stop


def paced(chunks: Iterable[np.ndarray], rate: int) -> Iterator[np.ndarray]:
    """Yield chunks no faster than real time."""
    start, done = time.monotonic(), 0
    for chunk in chunks:
        done += len(chunk)
        delay = done / rate - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        yield chunk


def run_stream(
    detector: AngerDetector,
    chunks: Iterable[np.ndarray],
    rate: int,
    info: dict[str, Any],
    publish: Callable[[list[Event]], None],
    overflows: Callable[[], int] = lambda: 0,
) -> None:
    """Feed a source through the detector until it ends, is interrupted or its reader goes away."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    publish([Status("start", 0.0, {"sample_rate": rate, **info})])
    seen_overflows = 0
    counts = {"windows": 0, "angry_windows": 0, "silent_windows": 0, "anger_segments": 0}
    state = "end"

    def publish_counted(events: list[Event]) -> None:
        for e in events:
            if isinstance(e, Window):
                counts["windows"] += 1
                counts["angry_windows"] += e.angry
                counts["silent_windows"] += e.silent
            counts["anger_segments"] += isinstance(e, AngerStart)
        publish(events)

    try:
        for chunk in chunks:
            publish_counted(detector.feed(chunk, rate))
            if overflows() != seen_overflows:
                seen_overflows = overflows()
                publish([Status("overflow", detector.stream.t, {"overflows": seen_overflows})])
    except (KeyboardInterrupt, Stop):
        state = "interrupted"
    t_end = detector.stream.t
    publish_counted(detector.flush())
    publish([Status(state, t_end, counts)])


def _print_devices(as_json: bool) -> None:
    from .sources.microphone import list_input_devices

    mute_native_stderr()
    devices = list_input_devices()
    if as_json:
        for d in devices:
            emit_line(json.dumps(d))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("index", "name", "host API", "channels", "default rate", "default", title="input devices")
    for d in devices:
        table.add_row(
            str(d["index"]),
            d["name"],
            d["hostapi"],
            str(d["channels"]),
            f"{d['default_rate']:.0f}",
            "*" if d["default"] else "",
        )
    Console(stderr=True).print(table)


@app.callback(invoke_without_command=True)
def detect(
    ctx: typer.Context,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="p(anger) at or above this is angry.")] = 0.6,
    input: Annotated[
        str | None, typer.Option("--input", "-i", help="Audio file, or - for raw PCM on stdin. Default: mic.")
    ] = None,
    format: Annotated[str, typer.Option(help="Raw stdin format: s16le, f32le, mulaw or alaw.")] = "s16le",
    rate: Annotated[int, typer.Option(min=1000, max=384000, help="Raw stdin sample rate in Hz.")] = 16000,
    device: Annotated[str | None, typer.Option(help="Input device name or index (see --list-devices).")] = None,
    list_devices: Annotated[bool, typer.Option("--list-devices", help="List input devices and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list-devices: JSON lines on stdout.")] = False,
    realtime: Annotated[bool, typer.Option(help="Pace file/stdin input in real time.")] = False,
    events_only: Annotated[bool, typer.Option("--events-only", help="Leave out the window lines.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live meter on stderr.")] = False,
    model: Annotated[Path | None, typer.Option(help="ONNX model (default: the packaged one).")] = None,
    window: Annotated[float, typer.Option(help="Window length in seconds.")] = audio.WINDOW_S,
    hop: Annotated[float, typer.Option(help="Hop between windows in seconds.")] = audio.HOP_S,
    min_dbfs: Annotated[float, typer.Option(help="Silence gate: quieter windows are not scored.")] = audio.MIN_DBFS,
    patience: Annotated[int, typer.Option(min=1, help="Angry windows in a row to start a segment.")] = 1,
    hysteresis: Annotated[float, typer.Option(min=0.0, help="A segment ends below threshold - this.")] = 0.1,
) -> None:
    """Listen to the microphone (or --input) and report anger every hop."""
    if ctx.invoked_subcommand is not None:
        return
    from .sources.raw import FORMATS

    if format not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
    try:
        if list_devices:
            _print_devices(as_json)
            return
        try:
            detector = AngerDetector(
                model,
                threshold,
                window_s=window,
                hop_s=hop,
                min_dbfs=min_dbfs,
                patience=patience,
                hysteresis=hysteresis,
            )
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
        _detect(detector, input, format, rate, device, realtime, events_only, quiet)
    except StdoutClosed:
        return
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)
    except DeviceError as exc:
        fail(str(exc), EXIT_DEVICE)
    except InputError as exc:
        fail(str(exc), EXIT_INPUT)


def _detect(
    detector: AngerDetector,
    input: str | None,
    fmt: str,
    rate: int,
    device: str | None,
    realtime: bool,
    events_only: bool,
    quiet: bool,
) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        overflows: Callable[[], int] = lambda: 0  # noqa: E731
        if input is None:
            from .sources.microphone import Microphone

            mute_native_stderr()
            mic = stack.enter_context(Microphone(device))
            chunks, rate, overflows = iter(mic), mic.sample_rate, lambda: mic.overflows
            info: dict[str, Any] = {"source": "microphone", "device": mic.name}
        elif input == "-":
            from .sources.raw import read_raw

            chunks, info = read_raw(sys.stdin.buffer, fmt), {"source": "stdin", "format": fmt}
        else:
            from .sources.file import open_file, read_blocks

            f = stack.enter_context(open_file(input))
            chunks, rate, info = read_blocks(f), f.samplerate, {"source": input}
        if realtime and input is not None:
            chunks = paced(chunks, rate)

        meter = None
        if not quiet and sys.stderr.isatty():
            from .display import Meter

            meter = stack.enter_context(Meter(detector.config.threshold, str(info.get("device", info["source"]))))

        def publish(events: list[Event]) -> None:
            for e in events:
                if not (events_only and isinstance(e, Window)):
                    emit_line(to_json(e))
            if meter is not None:
                meter.update(events)

        run_stream(detector, chunks, rate, info, publish, overflows)


def main() -> None:
    """Console-script entry point: a clean one-line error for anything unexpected."""
    try:
        app()
    except (StdoutClosed, KeyboardInterrupt):
        sys.exit(0)
    except OutputError as exc:
        print(f"anger-stream: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_OUTPUT)
    except Exception as exc:  # the last line of defence: never a traceback for the user
        print(f"anger-stream: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
