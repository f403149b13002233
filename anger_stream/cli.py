"""The `anger-stream` command: wires a source (microphone, file, stdin), the detector core and the sinks,
and the subcommands, which live in their own modules.

stdout carries JSON lines only; everything for people (the meter, errors) goes to stderr. Exit codes: stdio.py.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Annotated, Any

import numpy as np
import typer

from . import __version__, channels, options
from .batch import batch
from .calibrate import calibrate_command
from .detector import AngerDetector, check_rate
from .events import Counts, Event, Status, Window, to_json
from .files import check_input, open_stream, shown
from .model import ModelError
from .report import report
from .serve.command import ENV_PREFIX, serve
from .sources import DeviceError, InputError
from .stdio import (
    EXIT_DEVICE,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_MODEL,
    EXIT_OUTPUT,
    EXIT_USAGE,
    OutputError,
    StdoutClosed,
    emit_line,
    fail,
    mute_native_stderr,
    say,
    stderr_is_terminal,
    warn,
)

try:  # typer >= 0.22 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

RAW_FORMATS = ("s16le", "f32le", "mulaw", "alaw")
G711 = ("mulaw", "alaw")
DEFAULT_FORMAT, DEFAULT_RATE = "s16le", 16000

app = typer.Typer(
    cls=options.Group,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
for command in (batch, report):
    app.command(cls=options.Command)(command)
app.command(cls=options.Command, context_settings={"auto_envvar_prefix": ENV_PREFIX})(serve)
app.command("calibrate", cls=options.Command)(calibrate_command)


class Stop(Exception):
    """Ctrl-C or SIGTERM: end the stream cleanly."""


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
"""Held back while a chunk is scored and its lines written, so that a stop never falls between the detector's
state and its events (an anger_start lost, or a stream ended half-way through a tick)."""
_deferred = {"active": False, "pending": False}


def _on_stop(signum: int, frame: object) -> None:
    """Raise Stop, or, inside `stops_deferred`, remember it for the block's end. (Blocking the signals would
    not do: onnxruntime's threads do not block them, and Python runs the handler in the main thread anyway.)"""
    if _deferred["active"]:
        _deferred["pending"] = True
        return
    raise Stop


@contextmanager
def stops_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving in the block take effect at its end (when it ends without an error)."""
    _deferred["active"] = True
    try:
        yield
    finally:
        _deferred["active"] = False
    if _deferred["pending"]:
        _deferred["pending"] = False
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
    detector: AngerDetector | channels.SplitDetector,
    chunks: Iterable[np.ndarray],
    rate: int,
    info: dict[str, Any],
    publish: Callable[[list[Event]], None],
    overflows: Callable[[], int] = lambda: 0,
) -> None:
    """Feed a source through the detector until it ends, is interrupted or its reader goes away."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_stop)
    publish([Status("start", 0.0, {"sample_rate": rate, **info})])
    seen_overflows = 0
    counts = Counts()
    state = "end"

    def publish_counted(events: list[Event]) -> None:
        counts.add(map(channels.unwrap, events))
        publish(events)

    try:
        for chunk in chunks:
            with stops_deferred():
                publish_counted(detector.feed(chunk, rate))
                if overflows() != seen_overflows:
                    seen_overflows = overflows()
                    publish([Status("overflow", detector.t, {"overflows": seen_overflows})])
    except (KeyboardInterrupt, Stop):
        state = "interrupted"
    with suppress(Stop), stops_deferred():  # a stop now has nothing left to stop
        t_end = detector.duration
        publish_counted(detector.flush(interrupted=state == "interrupted"))
        publish([Status(state, t_end, counts.to_dict())])


def _print_devices(as_json: bool) -> None:
    from .sources.microphone import list_input_devices

    mute_native_stderr()
    devices = list_input_devices()
    if not devices:
        warn("no audio input devices found; --input FILE reads a file, --input - reads standard input")
        return
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


def _version(value: bool) -> None:
    if value:
        print(f"anger-stream {__version__}")
        raise typer.Exit()


def _refuse_options_before(ctx: typer.Context) -> None:
    """Options of the detector given before a subcommand would be ignored: a usage error instead."""
    given = [p.opts[0] for p in ctx.command.params if ctx.get_parameter_source(p.name).name == "COMMANDLINE"]
    if given:
        fail(
            f"{', '.join(given)} before `{ctx.invoked_subcommand}` would be ignored: a command's options go after "
            f"its name (anger-stream {ctx.invoked_subcommand} --help lists them)",
            EXIT_USAGE,
        )


@app.callback(invoke_without_command=True)
def detect(
    ctx: typer.Context,
    input: Annotated[
        str | None,
        typer.Option(
            "--input", "-i", metavar="FILE", help="Audio file, or - for standard input. [default: the microphone]"
        ),
    ] = None,
    threshold: options.Threshold = None,
    model: options.Model = None,
    min_dbfs: options.MinDbfs = None,
    patience: options.Patience = None,
    hysteresis: options.Hysteresis = None,
    hold: options.Hold = None,
    window: options.Window = None,
    hop: options.Hop = None,
    config: options.ConfigFile = None,
    events_only: options.EventsOnly = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live meter on stderr.")] = False,
    realtime: Annotated[bool, typer.Option("--realtime", help="Pace file and stdin input in real time.")] = False,
    format: Annotated[
        str | None,
        typer.Option(
            metavar="FMT",
            help=f"Headerless stdin: {', '.join(RAW_FORMATS)}. Required for raw audio that is not "
            f"{DEFAULT_FORMAT}; WAV, FLAC and OGG are recognised. [default: {DEFAULT_FORMAT}]",
        ),
    ] = None,
    rate: Annotated[
        int | None,
        typer.Option(
            metavar="HZ",
            help=f"Headerless stdin: sample rate. Required for raw audio not at {DEFAULT_RATE} Hz. "
            f"[default: {DEFAULT_RATE}]",
        ),
    ] = None,
    channel_mode: Annotated[
        str,
        typer.Option(
            "--channels",
            metavar="MODE",
            show_default=False,
            help="--input files: mix averages the channels; split scores each as its own stream (lines get "
            '"channel"). [default: mix]',
        ),
    ] = "mix",
    channel: Annotated[
        int | None, typer.Option(metavar="N", help="--input files: score channel N alone (0 is the first).")
    ] = None,
    device: Annotated[str | None, typer.Option(metavar="NAME|INDEX", help="Input device (see --list-devices).")] = None,
    list_devices: Annotated[bool, typer.Option("--list-devices", help="List input devices and exit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="With --list-devices: JSON lines on stdout.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Real-time anger detection in speech: listen to the microphone (or --input) and report p(anger) every
    hop as JSON lines on stdout, with a live meter on stderr.

    Commands (anger-stream COMMAND -h for their options): serve for phone calls, batch for archives of
    recordings, report for one recording's timeline, calibrate to choose the threshold on your own audio.
    """
    if ctx.invoked_subcommand is not None:
        _refuse_options_before(ctx)
        return
    if format is not None and format not in RAW_FORMATS:
        fail(f"--format must be one of {', '.join(RAW_FORMATS)}, not {format!r}", EXIT_USAGE)
    streamed = input is not None and _names_stream(input)
    if (format is not None or rate is not None) and not streamed:
        fail("--format and --rate describe headerless audio on standard input (--input -) or a pipe", EXIT_USAGE)
    if rate is not None:
        try:
            check_rate(rate)
        except ValueError as exc:
            fail(f"--rate: {exc}", EXIT_USAGE)
    if (channel_mode != "mix" or channel is not None) and (input is None or streamed):
        where = "the microphone" if input is None else "standard input or a pipe"
        fail(f"--channels and --channel choose channels of an --input file, not of {where}", EXIT_USAGE)
    if device is not None and (input is not None or list_devices):
        fail("--device chooses the microphone: it does not apply with --input or --list-devices", EXIT_USAGE)
    if as_json and not list_devices:
        fail("--json is for --list-devices (the detector's lines on stdout are always JSON)", EXIT_USAGE)
    if list_devices and input is not None:
        fail("--list-devices lists the microphones and exits: it does not read --input", EXIT_USAGE)
    try:
        channels.check(channel_mode, channel)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    settings = options.detector_settings(
        config,
        threshold=threshold,
        model=model,
        min_dbfs=min_dbfs,
        patience=patience,
        hysteresis=hysteresis,
        hold=hold,
        window=window,
        hop=hop,
    )
    try:
        if list_devices:
            _print_devices(as_json)
            return
        detector = AngerDetector(settings.model, config=settings.config)
        _detect(detector, input, format, rate, device, realtime, events_only, quiet, (channel_mode, channel))
    except StdoutClosed:
        return
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)
    except DeviceError as exc:
        hint = "; --list-devices shows the input devices, --input reads a file (- for stdin)"
        fail(f"{exc}{hint if input is None else ''}", EXIT_DEVICE)
    except InputError as exc:
        fail(str(exc), EXIT_INPUT)


def _names_stream(input: str) -> bool:
    """Whether --input names a stream (-, a FIFO, a pipe such as <(cmd) or /dev/stdin), not a file."""
    return input == "-" or (os.path.exists(input) and not os.path.isfile(input) and not os.path.isdir(input))


def _stream(
    stream: io.BufferedReader, source: str, fmt: str | None, rate: int | None
) -> tuple[Iterator[np.ndarray], int, dict[str, Any]]:
    """Chunks, sample rate and description of a byte stream (stdin, a pipe): a WAV, FLAC or OGG stream, or raw
    audio; `source` is how lines and messages name it."""
    from .sources import stdin
    from .sources.raw import read_raw

    name = "standard input" if source == "stdin" else shown(source)
    kind = stdin.sniff(stream)
    if not stream.peek(1):
        raise InputError(f"no audio on {name} (zero bytes)")
    if kind is not None:
        if fmt is not None or rate is not None:
            fail(f"{name} is a {kind} stream: --format and --rate are for headerless audio", EXIT_USAGE)
        f = stdin.open_stream(stream, kind, name)
        return stdin.read_stream(f, name), f.samplerate, {"source": source, "format": kind.lower()}
    if (fmt is None and rate is None) or (fmt in G711 and rate is None):  # G.711 is nearly always 8000 Hz
        missing = " and ".join(f"--{o}" for o, v in (("format", fmt), ("rate", rate)) if v is None)
        warn(
            f"{name} has no WAV, FLAC or OGG header: reading it as raw {fmt or DEFAULT_FORMAT} at "
            f"{rate or DEFAULT_RATE} Hz (give {missing} for raw audio that is not)"
        )
    fmt, rate = fmt or DEFAULT_FORMAT, rate or DEFAULT_RATE
    return read_raw(stream, fmt, name=name), rate, {"source": source, "format": fmt}


def _detect(
    detector: AngerDetector,
    input: str | None,
    fmt: str | None,
    rate: int | None,
    device: str | None,
    realtime: bool,
    events_only: bool,
    quiet: bool,
    pick: tuple[str, int | None] = ("mix", None),
) -> None:
    """`pick`: the channels of an --input file to score (`channels.select`'s mode and channel)."""
    from contextlib import ExitStack

    mute_native_stderr()  # PortAudio, ALSA and libmpg123 write to fd 2; errors here stay one line
    with ExitStack() as stack:
        overflows: Callable[[], int] = lambda: 0  # noqa: E731
        if input is None:
            from .sources.microphone import Microphone

            mic = stack.enter_context(Microphone(device))
            chunks, sample_rate, overflows = iter(mic), mic.sample_rate, lambda: mic.overflows
            info: dict[str, Any] = {"source": "microphone", "device": mic.name}
        elif input == "-":
            if sys.stdin is None:
                raise InputError("standard input is closed (--input - reads it)")
            chunks, sample_rate, info = _stream(sys.stdin.buffer, "stdin", fmt, rate)
        elif not check_input(input, streams=True):
            chunks, sample_rate, info = _stream(stack.enter_context(open_stream(input)), input, fmt, rate)
        else:
            from .sources.file import open_file, read_frames

            f = stack.enter_context(open_file(input))
            try:
                channels.select(np.zeros((1, f.channels), np.float32), *pick)  # the file has the channel
            except ValueError as exc:
                raise InputError(f"{shown(input)}: {exc}") from None
            frames, sample_rate, info = read_frames(f, input, warn), f.samplerate, {"source": input}
            if pick[0] == "split":
                detector, chunks, info["channels"] = channels.SplitDetector(detector, f.channels), frames, "split"
            else:
                chunks = (channels.select(block, *pick)[0][1] for block in frames)
                info |= {} if pick[1] is None else {"channel": pick[1]}
        try:
            check_rate(sample_rate)
        except ValueError as exc:
            raise InputError(f"{shown(info['source'])}: {exc}") from None
        if realtime and input is not None:
            chunks = paced(chunks, sample_rate)

        meter = None
        if not quiet and stderr_is_terminal() and pick[0] != "split":  # one meter, for one stream
            from .display import Meter

            meter = stack.enter_context(Meter(detector.config.threshold, str(info.get("device", info["source"]))))

        def publish(events: list[Event]) -> None:
            for e in events:
                if not (events_only and isinstance(channels.unwrap(e), Window)):
                    emit_line(to_json(e))
            if meter is not None:
                meter.update(events)

        run_stream(detector, chunks, sample_rate, info, publish, overflows)


def _usage_error(exc: ClickException) -> int:
    """A command-line mistake as one line on stderr, with where to find the options."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    hint = f" ({ctx.command_path} -h lists the options)" if ctx is not None else ""
    say(f"anger-stream: error: {message}{hint}")
    return exc.exit_code


def main() -> None:
    """Console-script entry point: one line on stderr and a documented exit code for every error."""
    mute_native_stderr()  # ONNX Runtime, PortAudio, ALSA and Dask's worker processes write to fd 2: not for people
    try:
        code = typer.main.get_command(app).main(prog_name="anger-stream", standalone_mode=False)
    except ClickException as exc:
        code = _usage_error(exc)
    except (StdoutClosed, KeyboardInterrupt, Stop):  # Stop: after the stream's last line
        code = 0
    except OutputError as exc:
        say(f"anger-stream: error: {exc}")
        code = EXIT_OUTPUT
    except Exception as exc:  # the last line of defence: never a traceback for the user
        say(f"anger-stream: internal error: {type(exc).__name__}: {exc}")
        code = EXIT_INTERNAL
    sys.exit(code if isinstance(code, int) else 0)
