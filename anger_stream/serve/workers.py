"""`serve --workers N`: N server processes sharing the listening ports, so one host's calls use all its cores.

One process's event loop and Python-side work run under one GIL, and that, not the model, caps the calls a
process holds (docs/telephony.md). Each worker is a whole `serve` process with its own model, hub and calls.
The parent binds every address once per worker with SO_REUSEPORT before forking, so the kernel spreads new
connections over the workers' sockets and port 0 resolves to one port for all. A call lives and ends in the
worker that accepted it. The parent forwards SIGINT/SIGTERM and waits; if a worker fails, it stops the rest;
if the parent dies, the kernel tells the workers to stop (Linux's parent-death signal).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace

from ..stdio import say
from .server import BACKLOG, Listen, ListenError

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class LineLock:
    """Each worker's stdout lines whole, whatever their length: a POSIX record lock on one temporary file,
    taken around each line's write and flush (a pipe writes only 4,096 bytes atomically). The lock belongs
    to the process that took it, so the workers exclude each other, and the kernel releases it if one dies."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (held for the life of the process)

    def __enter__(self) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._file, fcntl.LOCK_UN)


def bind(listen: list[Listen], workers: int) -> list[list[Listen]]:
    """Each worker's copy of `listen`, with its own listening socket on the same port (ListenError if not).

    SO_REUSEPORT would also let these sockets join a port that another process (say, a second `serve
    --workers`) holds with SO_REUSEPORT, so each address is first bound without it: that fails on a port in
    use by anyone.
    """
    per_worker: list[list[Listen]] = [[] for _ in range(workers)]
    for spec in listen:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                spec.host, spec.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(address)
                address = probe.getsockname()  # port 0 resolved
            for copies in per_worker:
                sock = socket.socket(family, kind, proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                copies.append(replace(spec, port=address[1], sock=sock))
        except OSError as exc:
            raise ListenError.of(spec, exc) from None
    return per_worker


def run(per_worker: list[list[Listen]], work: Callable[[int, list[Listen]], None]) -> int:
    """Fork a process per worker to run `work(index, its listeners)`; the first failing exit code, or 0."""
    children: dict[int, int] = {}
    parent = os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # no signal between the forks and the handler
    for index, listen in enumerate(per_worker):
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, OSError):  # closed (None) or full: nothing to carry over
                stream.flush()
        pid = os.fork()
        if pid == 0:
            _child(index, listen, per_worker, work, parent)
        children[pid] = index
    for copies in per_worker:  # the workers hold the sockets now
        for spec in copies:
            spec.sock.close()

    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            os.kill(pid, signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    code = 0
    while children:
        pid, status = os.wait()
        index = children.pop(pid)
        rc = os.waitstatus_to_exitcode(status)
        if rc == 0 or (stopping and -rc in STOP_SIGNALS):
            continue
        if code == 0:
            say(f"anger-stream serve: worker {index} exited with code {rc}; stopping")
            code = rc if rc > 0 else 1
            stopping = True
            for other in children:
                os.kill(other, signal.SIGTERM)
    return code


def _child(
    index: int,
    listen: list[Listen],
    per_worker: list[list[Listen]],
    work: Callable[[int, list[Listen]], None],
    parent: int,
) -> None:
    """In a forked worker: keep only its own sockets, run, and exit without returning into the parent's code."""
    code = 1
    try:
        _stop_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        for other, copies in enumerate(per_worker):
            for spec in copies if other != index else ():
                spec.sock.close()
        work(index, listen)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except KeyboardInterrupt:  # Ctrl-C before the worker's own handler was in place
        code = 0
    except Exception as exc:
        code = getattr(exc, "exit_code", None)  # typer.Exit, raised after its message was printed
        if not isinstance(code, int):
            say(f"anger-stream serve: worker {index}: internal error: {type(exc).__name__}: {exc}")
            code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send SIGTERM to this worker when the parent dies (Linux), so no worker is orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before that took effect
        raise SystemExit(0)
