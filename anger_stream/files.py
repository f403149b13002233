"""Every command's files: opening an input (a recording, a results file) and an output (results, a figure, a
settings file), with one set of messages.

An input the command cannot use raises InputError (exit 3); an output it cannot write raises OutputError
(exit 6). An output is created atomically (O_EXCL where it must be new) and held under an exclusive lock while
it is written, so a second writer of the same file is refused with one line instead of losing or doubling
results. Paths may be any bytes the system allows: messages show undecodable bytes as \\xNN escapes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO, Literal

from .sources.errors import InputError
from .stdio import OutputError

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}
Mode = Literal["new", "replace", "append"]
LOCK_WAIT_S = 0.5
"""How long a lock held by someone else is waited for before the output is refused."""


class OutputExists(OutputError):
    """An output that must be new already exists (the command says which option continues or replaces it)."""


def shown(path: str | os.PathLike[str]) -> str:
    """A path as a person reads it: bytes that are not UTF-8 (a Latin-1 name, say) as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EACCES:
        return "permission denied"
    return (exc.strerror or type(exc).__name__).lower()


def check_input(path: str | os.PathLike[str], streams: bool = False) -> bool:
    """Check that `path` names a readable, non-empty recording; True if it is a regular file, False if it is a
    stream (a FIFO, a pipe such as `<(cmd)` or /dev/stdin) and `streams` allows one. Raises InputError."""
    name = shown(path)
    try:
        mode, size = (info := os.stat(path)).st_mode, info.st_size
    except FileNotFoundError:
        raise InputError(f"no such file: {name}") from None
    except OSError as exc:
        raise InputError(f"cannot read {name}: {_reason(exc)}") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"is a folder, not a file: {name}")
    if not stat.S_ISREG(mode):
        if streams and (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)):
            return False
        kind = _KINDS.get(stat.S_IFMT(mode), "a socket" if stat.S_ISSOCK(mode) else "special")
        raise InputError(f"not a regular file ({kind}): {name}")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {name}: permission denied")
    if size == 0:
        raise InputError(f"empty file (zero bytes): {name}")
    return True


def open_stream(path: str | os.PathLike[str]) -> BinaryIO:
    """A FIFO or pipe named by `path`, opened for reading (buffered, with peek)."""
    try:
        return open(path, "rb")  # noqa: SIM115 (the caller closes it)
    except OSError as exc:
        raise InputError(f"cannot read {shown(path)}: {_reason(exc)}") from None


def _lock(fd: int, path: str | os.PathLike[str]) -> None:
    """Take an exclusive lock on an open output, or close it and raise OutputError: one writer per file.

    A lock held for LOCK_WAIT_S is another writer's (another process checking whether the file is being
    written holds it only for a moment). Where the file system has no locks, writing goes on without one.
    """
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() < deadline:
                time.sleep(0.01)
                continue
            os.close(fd)
            raise OutputError(
                f"{shown(path)} is being written by another anger-stream process: wait for it to end, or choose "
                "another file"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                return
            os.close(fd)
            raise OutputError(f"cannot lock {shown(path)}: {_reason(exc)}") from None


def _refuse_if_written(path: str | os.PathLike[str]) -> None:
    """OutputError if another process holds the lock on `path`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    _lock(fd, path)
    os.close(fd)


def open_output(path: str | os.PathLike[str], mode: Mode = "replace") -> BinaryIO:
    """Open `path` for writing under an exclusive lock, or raise OutputError.

    new: create it (O_EXCL); if it exists, OutputExists (or OutputError if another process writes it).
    replace: create or empty it. append: create it or keep its contents, positioned at its end; it is opened
    for reading too, so that the caller can check what is there under the lock.
    """
    name = shown(path)
    flags = {"new": os.O_CREAT | os.O_EXCL | os.O_WRONLY, "replace": os.O_CREAT | os.O_WRONLY}
    try:
        fd = os.open(path, flags.get(mode, os.O_CREAT | os.O_RDWR) | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        if os.path.isdir(path):
            raise OutputError(f"cannot write {name}: it is a folder") from None
        _refuse_if_written(path)
        raise OutputExists(f"{name} exists") from None
    except IsADirectoryError:
        raise OutputError(f"cannot write {name}: it is a folder") from None
    except FileNotFoundError:
        folder = Path(os.fsdecode(path)).parent
        raise OutputError(f"cannot write {name}: there is no folder {shown(folder)}") from None
    except OSError as exc:
        raise OutputError(f"cannot write {name}: {_reason(exc)}") from None
    _lock(fd, path)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        if mode == "append":
            os.close(fd)
            raise OutputError(f"cannot append to {name}: not a regular file")
    elif mode == "replace":
        os.ftruncate(fd, 0)
    elif mode == "append":
        os.lseek(fd, 0, os.SEEK_END)
    return open(fd, "r+b" if mode == "append" else "wb", buffering=0)  # noqa: SIM115 (the caller closes it)
