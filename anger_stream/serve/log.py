"""The server's lines for people on stderr: escaped, cut short, limited per peer, and never blocking.

Any peer can make the server log a line (a refused upgrade, a malformed frame), so a line is made safe and
cheap before it is written: control characters are escaped (a peer's id cannot forge a line or drive a
terminal), a line is cut at MAX_LINE characters, and lines about one peer host beyond PEER_BURST plus
PEER_PER_S a second are dropped (the next line about it says how many). While a `Writer` runs (each serve
process runs one), lines go through a queue of at most QUEUE lines to a thread that writes them: a stderr
that nobody reads then stalls that thread only, never the event loop, and lines that find the queue full
are dropped and counted (the next line written says how many). Without a writer, lines are printed at once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator

from ..stdio import say
from .allowance import Allowance

PREFIX = "anger-stream serve: "
MAX_LINE = 1000
"""Characters of a line after escaping (peer text is quoted shorter where it is named; this is the last cap)."""
QUEUE = 1000
"""Lines waiting for the writer thread before further lines are dropped."""
PEER_BURST, PEER_PER_S = 20, 1.0
"""Lines about one peer host: at most PEER_BURST at once, PEER_PER_S a second after that."""
PEERS = 4096
"""Peer hosts whose line allowance is remembered (the least recently logged is forgotten first)."""
DRAIN_S = 1.0
"""At the end, how long the lines still queued may take to be written before they are given up."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """`text` with control characters (and Unicode line separators) escaped as \\xNN or \\uNNNN."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def line(message: str) -> str:
    """A message as one safe line: prefixed, escaped and cut at MAX_LINE characters."""
    text = PREFIX + printable(message)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."


class _PeerLimit:
    """Token buckets per peer host (PEER_BURST, PEER_PER_S), and how many lines each had dropped."""

    def __init__(self) -> None:
        self._peers: OrderedDict[str, tuple[Allowance, int]] = OrderedDict()  # allowance, lines dropped

    def admit(self, peer: str, now: float) -> int | None:
        """None if the line about `peer` is dropped, else how many were dropped before it."""
        allowance, dropped = self._peers.pop(peer, None) or (Allowance(PEER_PER_S, PEER_BURST, now), 0)
        admitted = dropped if allowance.take(now) else None
        self._peers[peer] = (allowance, 0 if admitted is not None else dropped + 1)
        while len(self._peers) > PEERS:
            self._peers.popitem(last=False)
        return admitted


class Writer:
    """The thread that writes queued lines to stderr (fd-level writes: no Python lock is held while blocked)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue(QUEUE)
        self._dropped = 0
        self._lock = threading.Lock()
        self._fd = sys.stderr.fileno()
        self._thread = threading.Thread(target=self._run, name="anger-log", daemon=True)
        self._thread.start()

    def put(self, text: str) -> None:
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            with self._lock:
                self._dropped += 1

    def _run(self) -> None:
        while (text := self._queue.get()) is not None:
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            if dropped:
                text = line(f"{dropped} log lines dropped (stderr is not read fast enough)") + "\n" + text
            data = (text + "\n").encode(errors="replace")
            try:
                while data:
                    data = data[os.write(self._fd, data) :]
            except OSError:
                return  # stderr is gone: nothing more can be said

    def close(self) -> None:
        """Write what is queued, waiting at most DRAIN_S (a stderr nobody reads keeps the rest)."""
        try:
            self._queue.put(None, timeout=DRAIN_S)
        except queue.Full:
            return
        self._thread.join(DRAIN_S)


_writer: Writer | None = None
_limit = _PeerLimit()


def log(message: str, peer: str | None = None) -> None:
    """One line for people on stderr; `peer`: the host the line is about (lines about it are rate-limited)."""
    if peer is not None:
        dropped = _limit.admit(peer, time.monotonic())
        if dropped is None:
            return
        if dropped:
            message += f" ({dropped} earlier lines about {peer} dropped)"
    text = line(message)
    if _writer is not None:
        _writer.put(text)
    else:
        say(text)  # dropped, never on stdout, when stderr is closed


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Within this context, `log` hands lines to a writer thread (started here, drained at the end)."""
    global _writer
    try:
        sys.stderr.flush()
        _writer = Writer()
    except (AttributeError, OSError, ValueError):  # no file descriptor behind stderr: lines are printed
        _writer = None
    try:
        yield
    finally:
        writer, _writer = _writer, None
        if writer is not None:
            writer.close()
