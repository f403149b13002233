"""How every command meets the shell: JSON lines on stdout, one-line errors on stderr, exit codes.

Exit codes: 0 normal end (end of input, Ctrl-C, SIGTERM, the reader of stdout went away), 1 internal error,
2 usage error, 3 input error, 4 audio device error, 5 model error, 6 an output (stdout, --out) cannot be
written (disk full, closed, no such folder, another process writing it), 130 a batch job interrupted.

Lines for people go to stderr only: with stderr closed or full they are dropped, never written to stdout
(the JSON stream) and never a reason to exit differently.
"""

from __future__ import annotations

import contextlib
import os
import sys
from contextlib import AbstractContextManager
from typing import Any, NoReturn

import typer

EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_DEVICE, EXIT_MODEL, EXIT_OUTPUT = 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130


_muted = False


class StdoutClosed(Exception):
    """The reader of stdout went away (e.g. `| head -n 1`): a normal end."""


class OutputError(Exception):
    """An output (stdout, an --out file) cannot be written: the results would be lost."""


def say(line: str) -> None:
    """One line on stderr; dropped if stderr is closed or cannot be written (`2>&-`, `2>/dev/full`)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        _discard_stderr()


def _discard_stderr() -> None:
    """Point fd 2 and sys.stderr at /dev/null so that nothing buffered can fail again at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    sys.stderr = os.fdopen(null, "w")


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal (for the meter and progress bars)."""
    return sys.stderr is not None and sys.stderr.isatty()


def fail(message: str, code: int) -> NoReturn:
    """One clear line on stderr and a distinct exit code."""
    say(f"anger-stream: error: {message}")
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr that does not stop the command."""
    say(f"anger-stream: warning: {message}")


def note(message: str) -> None:
    """One line for people on stderr: what a command did (e.g. the file it wrote)."""
    say(f"anger-stream: {message}")


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null so that Python's exit-time flush of stdout cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def emit_line(line: str, lock: AbstractContextManager[Any] | None = None) -> None:
    """Write one JSON line to stdout and flush it at once (holding `lock`, if given, meanwhile)."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise OutputError("cannot write to stdout: it is closed")
    try:
        with lock or contextlib.nullcontext():
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        raise StdoutClosed from None
    except OSError as exc:
        _discard_stdout()
        raise OutputError(f"cannot write to stdout: {exc.strerror or exc}") from None


def mute_native_stderr() -> None:
    """Send what C libraries (PortAudio, ALSA, libmpg123) print to fd 2 to /dev/null; Python's stderr keeps
    the terminal. Idempotent."""
    global _muted
    if _muted or sys.stderr is None:
        return
    try:
        sys.stderr.flush()
    except OSError:
        _discard_stderr()
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    _muted = True


def require(module: str, extra: str, what: str) -> None:
    """A usage error naming the pip extra when an optional dependency of `what` is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fail(f'{what} needs {module}, which is not installed: pip install "anger-stream[{extra}]"', EXIT_USAGE)
