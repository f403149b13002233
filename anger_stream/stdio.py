"""How every command meets the shell: JSON lines on stdout, one-line errors on stderr, exit codes.

Exit codes: 0 normal end (end of input, Ctrl-C, SIGTERM, the reader of stdout went away), 1 internal error,
2 usage error, 3 input error, 4 audio device error, 5 model error, 6 stdout cannot be written (disk full,
closed), 130 a batch job interrupted.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import typer

EXIT_INTERNAL, EXIT_USAGE, EXIT_INPUT, EXIT_DEVICE, EXIT_MODEL, EXIT_OUTPUT = 1, 2, 3, 4, 5, 6
EXIT_INTERRUPTED = 130


_muted = False


class StdoutClosed(Exception):
    """The reader of stdout went away (e.g. `| head -n 1`): a normal end."""


class OutputError(Exception):
    """stdout cannot be written (a full disk, a closed descriptor): the results would be lost."""


def fail(message: str, code: int) -> NoReturn:
    """One clear line on stderr and a distinct exit code."""
    print(f"anger-stream: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def warn(message: str) -> None:
    """One line on stderr that does not stop the command."""
    print(f"anger-stream: warning: {message}", file=sys.stderr)


def _discard_stdout() -> None:
    """Point fd 1 at /dev/null so that Python's exit-time flush of stdout cannot fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def emit_line(line: str) -> None:
    """Write one JSON line to stdout and flush it at once."""
    if sys.stdout is None:  # started with stdout closed (`>&-`)
        raise OutputError("cannot write to stdout: it is closed")
    try:
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
    if _muted:
        return
    sys.stderr.flush()
    sys.stderr = os.fdopen(os.dup(2), "w", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    _muted = True


def require(module: str, extra: str, what: str) -> None:
    """A usage error naming the pip extra when an optional dependency of `what` is not installed."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        fail(f'{what} needs {module}, which is not installed: pip install "anger-stream[{extra}]"', EXIT_USAGE)
