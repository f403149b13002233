"""asyncio telephony servers around one Hub; what every connection does, whatever its protocol.

A connection (`CallConnection`, one subclass per protocol: audiosocket_connection.py,
mediastream_connection.py, websocket_pcm_connection.py) is an asyncio Protocol: each chunk of bytes goes
straight into its sans-I/O parser, with no task, stream reader or timer per frame (at 50 frames per second
per call, that per-frame machinery is what limits a server). It hands audio to the hub, which scores every
call in one shared StreamSet. The listener's `Listen` names the connection class, so the server knows no
protocol by name.

Defences against callers that misbehave, all per connection: at most MAX_EVENTS_PER_TURN frames are handled
before other connections get a turn (a connection that used its whole turn waits TURN_PAUSE_S); reading
pauses while the hub holds the call (audio too far ahead of scoring or of real time); each kind of message
has its rate bound (MESSAGE_RATES: more closes the connection); a peer that leaves more than MAX_OUTPUT
bytes unread is closed; one watchdog closes connections that send no audio (no complete frame before the
call has started) for --read-timeout seconds, whatever else they send, or whose audio falls below MIN_SPEED
times real time. Problems with one call go to stderr (log.py: never blocking, limited per peer host) and end
that call only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from .. import codec
from ..calls import ChannelId, DuplicateCall
from ..events import Event, Status
from .allowance import Allowance
from .hub import Hub
from .log import log
from .security import Policy

BACKLOG = 1024
"""Pending connections per listening socket (asyncio's default of 100 is short for a burst of calls)."""
SWITCH_INTERVAL_S = 0.0005
"""The GIL switch interval while serving. The event loop holds the GIL for most of each frame; a scoring
thread that released it (numpy, the model) waits up to this long to get it back, many times per tick.
Python's default of 5 ms made ticks crawl (docs/telephony.md has the A/B)."""
MAX_EVENTS_PER_TURN = 64
"""Frames or messages one connection handles before the event loop serves the others."""
TURN_PAUSE_S = 0.01
"""How long a connection that used its whole turn waits for the next: a flood of small frames (DTMF,
pings) is read at most 6,400 frames a second, 128 times what a call sends."""
MAX_OUTPUT = 1 << 18
"""Bytes queued for a peer that does not read them (WebSocket pongs, say) before it is closed."""
MIN_SPEED = 0.5
"""A call whose audio falls this far behind real time (beyond --read-timeout of slack) is closed."""
MESSAGE_RATES = {
    "DTMF digits": (20, 100),
    "marks": (50, 100),
    "pings": (50, 50),
    "pongs": (50, 50),
    "short audio frames": (100, 200),
    "media of other tracks": (100, 500),
    "notices": (20, 100),
}
"""Messages of each kind that are not progress: how many a connection may send per second, and at once;
more closes it (`flood`). A call sends a few digits a second, a mark per mark the server sent, a ping every
few seconds, 50 media messages a second on its outbound track, a notice now and then. Audio is paced by
flow control, by its bytes; frames carrying less than SHORT_FRAME_S of audio (empty ones included) count
here, so that tiny frames cannot multiply the work per second of audio."""
SHORT_FRAME_S = 0.005
"""Audio frames shorter than this are counted as `short audio frames` (calls send 20 ms)."""


READ_GAP_S = 0.06
"""A connection reading in batches (`batch_reads`) that has not delivered a frame for this long reads every
byte again (what is left of a call, a hangup, must not wait for bytes that may not come)."""


def peer_name(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


def peer_host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


class CallConnection(asyncio.Protocol):
    """One connection carrying one call. Subclasses parse their protocol in `_feed` and `_work`.

    The call's life: `name` (the protocol named the call), `open` (its audio format is known), `push`
    audio, `end` or `fail`; a call of several channels is one stream per channel in the hub (`streams`).
    `hold`/`release` pause reading for a reason ("turn": others' turn; "flow": the hub's flow control); reading
    resumes when no reason is left. Only audio is progress (`saw`); every
    other message is `counted` against its kind's rate.
    """

    protocol: ClassVar[str]  # the name in options, log lines and `listening` lines
    idle_error: ClassVar[str]  # what the watchdog reports, e.g. "no audio frame"

    def __init__(self, server: Server) -> None:
        self.server = server
        self.hub = server.hub
        self.opened = False  # the hub has the call
        self.over = False  # the call has ended or was refused: nothing more is reported
        self.eof = False
        self.streams: list[str] = []  # the call's ids in the hub, once open: one, or one per channel
        self._holds: set[str] = set()
        self._allowances: dict[str, Allowance] = {}
        self._short_frame = 0  # bytes: shorter audio frames are counted (set when the call opens)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.peer = peer_name(transport.get_extra_info("peername"))
        self.host = peer_host(transport.get_extra_info("peername"))
        self.call_id = f"{self.protocol}:{self.peer}"  # until the protocol names the call
        self.seen = self.opened_at = self.loop.time()  # last complete frame (audio once open)
        if not self.server.admits(self.protocol, transport):
            self.over = True
            return
        transport.set_write_buffer_limits(high=MAX_OUTPUT)
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._feed(data)
        self._turn()

    def eof_received(self) -> bool:
        self.eof = True
        if self.transport.get_extra_info("sslcontext") is None:
            self._turn()
            return True  # the connection closes once everything received has been handled
        # over TLS, asyncio closes the connection right after this: everything received is handled now
        self._holds.clear()
        while not self.transport.is_closing() and self._work(MAX_EVENTS_PER_TURN):
            pass
        return False

    def pause_writing(self) -> None:
        """More than MAX_OUTPUT bytes wait for a peer that does not read them."""
        self.fail(f"the peer does not read what it is sent ({MAX_OUTPUT} bytes waiting)", "not_reading")
        self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.batching.discard(self)
        self._lost(exc)
        self.end("interrupted")

    # what each protocol implements

    def _feed(self, data: bytes) -> None:
        """Keep bytes received for `_work`."""
        raise NotImplementedError

    def _work(self, budget: int) -> bool:
        """Handle at most `budget` frames or messages (and the end of input) while not held; whether more may
        be waiting."""
        raise NotImplementedError

    def _lost(self, exc: Exception | None) -> None:
        """The TCP connection is gone (`exc`: why, if it failed)."""

    def quiet(self) -> bool:
        """Whether closing this connection now is worth no line (a port probe, an unfinished handshake)."""
        return False

    def close(self) -> None:
        """Close the connection (as the protocol does it)."""
        self.transport.close()

    def batch_reads(self, least: int) -> None:
        """Be woken only once `least` bytes are waiting (the socket's receive low-water mark), so that a read
        carries several frames: fewer wake-ups per second of audio. The server's sweep undoes it when frames
        stop coming (READ_GAP_S). Plain TCP only."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or self.transport.get_extra_info("sslcontext") is not None:
            return
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, least)
            self.server.batching.add(self)

    def read_every_byte(self) -> None:
        """Undo `batch_reads`."""
        self.server.batching.discard(self)
        sock = self.transport.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)

    # reading, in turns

    def _turn(self) -> None:
        """Handle what has been received, at most MAX_EVENTS_PER_TURN frames, then let the others run."""
        if self._work(MAX_EVENTS_PER_TURN) and not self.transport.is_closing():
            self.hold("turn")
            self.loop.call_later(TURN_PAUSE_S, self.release, "turn")

    def hold(self, reason: str) -> None:
        if not self._holds:
            self.transport.pause_reading()
        self._holds.add(reason)

    def release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        if reason.startswith("flow"):
            self.seen = self.loop.time()  # not reading was our doing (the call, or a channel, was ahead)
        if not self._holds and not self.transport.is_closing():
            self.transport.resume_reading()
            self._turn()

    @property
    def held(self) -> bool:
        return bool(self._holds)

    @property
    def paced(self) -> bool:
        """Not read because its audio is ahead (the hub's flow control): not a stall."""
        return any(reason.startswith("flow") for reason in self._holds)

    def counted(self, kind: str) -> bool:
        """One more message of `kind` (a key of MESSAGE_RATES); beyond its rate the connection is closed
        (False)."""
        now = self.loop.time()
        allowance = self._allowances.get(kind) or self._allowances.setdefault(
            kind, Allowance(*MESSAGE_RATES[kind], now)
        )
        if allowance.take(now):
            return True
        self.fail(f"more than {MESSAGE_RATES[kind][0]} {kind} a second", "flood")
        self.transport.abort()  # no closing handshake: a flooding peer may never answer it
        return False

    # the call

    def saw(self) -> None:
        """A complete frame arrived that shows the caller is alive (audio, once the call has started)."""
        self.seen = self.loop.time()

    def name(self, call_id: str) -> None:
        """The protocol named the call; an id already being served is refused at once."""
        try:
            self.hub.check_free(call_id)
        except DuplicateCall as exc:
            self._refuse(call_id, exc)
            return
        self.call_id = call_id

    def _refuse(self, call_id: str, exc: DuplicateCall) -> None:
        self.call_id = f"{call_id}@{self.peer}"  # the other connection owns that id
        self.fail(str(exc), "duplicate_call")

    def open(
        self,
        sample_rate: int,
        encoding: str,
        info: dict[str, Any],
        on_events: Callable[[list[Event]], None] | None = None,
        channels: int = 1,
    ) -> None:
        """Start the call in the hub, each of several interleaved `channels` as a stream of its own (a
        `ChannelId`); a call id already being served (a race with `name`) is refused."""
        if self.server.worker is not None:
            info = {**info, "worker": self.server.worker}
        ids = [self.call_id] if channels == 1 else [ChannelId(self.call_id, c) for c in range(channels)]
        try:
            for stream in ids:
                self.hub.check_free(stream)
            for stream in ids:
                self.hub.open(stream, sample_rate, encoding, info, self if channels == 1 else _Channel(self, stream),
                              on_events)  # fmt: skip
                self.streams.append(stream)
        except DuplicateCall as exc:
            self._refuse(self.call_id, exc)
            return
        except ValueError as exc:  # a rate or encoding the call core cannot take
            self.fail(str(exc), "bad_format")
            return
        self.opened = True
        self.opened_at = self.loop.time()
        self._short_frame = round(SHORT_FRAME_S * sample_rate * codec.WIDTHS[encoding])

    def push(self, data: bytes, channel: int = 0) -> None:
        """Audio of the open call (of one of its channels)."""
        if len(data) < self._short_frame and not self.counted("short audio frames"):
            return
        if data:
            self.saw()
            self.hub.push(self.streams[channel], data, self.seen)

    def dtmf(self, digit: str) -> None:
        """A DTMF digit (ignored before the call has started)."""
        if self.counted("DTMF digits") and self.opened and not self.over:
            self.hub.dtmf(self.streams[0], digit)

    def end(self, state: str = "end", info: dict[str, Any] | None = None) -> None:
        """The call is over: its last windows are scored, then its final status line."""
        if self.over:
            return
        self.over = True
        for stream in self.streams:
            self.hub.end(stream, state, info)

    def fail(self, message: str, kind: str) -> None:
        """Log a call's error and report it: after its last windows if it started, at once otherwise. `kind`
        names the error for machines (`error_kind`; the README lists them)."""
        if self.over:
            return
        log(f"call {self.call_id}: {message}; closing it", self.host)
        if self.opened:
            self.end("error", {"error": message, "error_kind": kind})
        else:
            self.over = True
            info = {"error": message, "error_kind": kind, "protocol": self.protocol}
            self.hub.emit([(self.call_id, Status("error", 0.0, info))])


@dataclass(frozen=True)
class _Channel:
    """The reader the hub pauses for one channel of a connection: each channel holds reading for a reason of
    its own, so reading resumes only when no channel is ahead."""

    connection: CallConnection
    stream: str

    def hold(self, reason: str) -> None:
        self.connection.hold(f"{reason} {self.stream}")

    def release(self, reason: str) -> None:
        self.connection.release(f"{reason} {self.stream}")


@dataclass(frozen=True)
class Listen:
    connection: type[CallConnection]  # the protocol spoken on this address
    host: str
    port: int
    sock: socket.socket | None = None  # already listening on host:port (serve --workers)
    tls: ssl.SSLContext | None = None  # serve TLS on this address

    @property
    def protocol(self) -> str:
        return self.connection.protocol


class ListenError(Exception):
    """An address to listen on is taken, invalid or not allowed."""

    @classmethod
    def of(cls, spec: Listen, exc: OSError) -> ListenError:
        return cls(f"cannot listen on {spec.host}:{spec.port} ({spec.protocol}): {exc.strerror or exc}")


class Server:
    """The open connections of every listener, feeding one Hub."""

    def __init__(
        self,
        hub: Hub,
        read_timeout: float = 10.0,
        marks: bool = False,
        worker: int | None = None,
        policy: Policy | None = None,
    ) -> None:
        self.hub = hub
        self.read_timeout = read_timeout
        self.marks = marks
        self.worker = worker  # this process's index under `serve --workers`, named in each call's start line
        self.policy = policy or Policy()  # who may connect (security.py)
        self.connections: set[CallConnection] = set()
        self.batching: set[CallConnection] = set()  # connections reading in batches (`batch_reads`)

    def admits(self, protocol: str, transport: asyncio.BaseTransport) -> bool:
        """The allow-list: a connection from another network is closed at once, with one line on stderr."""
        address = transport.get_extra_info("peername")
        if self.policy.admits(address[0] if isinstance(address, tuple) else ""):
            return True
        log(f"refused {protocol} connection from {peer_name(address)}: not in --allow", peer_host(address))
        transport.abort()
        return False

    def close_all(self) -> None:
        """Shutdown: end every call as interrupted and close its connection."""
        for conn in list(self.connections):
            conn.end("interrupted")
            conn.close()

    async def watch(self) -> None:
        """Close connections that stalled or trickle (checked a few times per read timeout)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.read_timeout / 4, 1.0))
            now, slack = loop.time(), self.read_timeout
            for conn in list(self.connections):
                if conn.paced or conn.over:
                    continue
                if now - conn.seen > self.read_timeout:
                    self._close(conn, f"{conn.idle_error} for {self.read_timeout:g} s", "timeout")
                elif conn.opened and self.hub.t(conn.streams[0]) < MIN_SPEED * (now - conn.opened_at) - slack:
                    self._close(conn, f"audio arrives at less than {MIN_SPEED:g} times real time", "too_slow")

    async def sweep(self) -> None:
        """Connections reading in batches whose frames stopped coming read every byte again."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(READ_GAP_S / 2)
            now = loop.time()
            for conn in [c for c in self.batching if now - c.seen > READ_GAP_S and not c.held]:
                conn.read_every_byte()

    def _close(self, conn: CallConnection, message: str, kind: str) -> None:
        if conn.quiet():
            conn.over = True
            conn.transport.abort()
            return
        conn.fail(message, kind)
        conn.close()


def _log_unexpected(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's last resort, in one line instead of a traceback."""
    exc = context.get("exception")
    log(f"internal error: {context.get('message', '')}: {type(exc).__name__}: {exc}" if exc else context["message"])


async def _listen(server: Server, spec: Listen) -> asyncio.Server:
    where: dict[str, Any] = {"sock": spec.sock} if spec.sock else {"host": spec.host, "port": spec.port}
    if spec.tls is not None:
        where |= {"ssl": spec.tls, "ssl_handshake_timeout": server.read_timeout}
    connection = spec.connection
    return await asyncio.get_running_loop().create_server(lambda: connection(server), **where, backlog=BACKLOG)


async def serve(
    hub: Hub,
    listen: list[Listen],
    read_timeout: float = 10.0,
    marks: bool = False,
    worker: int | None = None,
    policy: Policy | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; then end every call ("interrupted"), report it, and return.

    `worker`: this process's index under `serve --workers`, named in its `listening` and call `start` lines.
    `policy`: who may connect (security.py).
    """
    server = Server(hub, read_timeout, marks, worker, policy)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the `listening` lines: a client may stop us at once
        loop.add_signal_handler(sig, stop.set)
    listeners = []
    for spec in listen:
        try:
            listeners.append(await _listen(server, spec))
        except OSError as exc:
            raise ListenError.of(spec, exc) from None
        host, port = listeners[-1].sockets[0].getsockname()[:2]
        which = {} if worker is None else {"worker": worker}
        log(f"{spec.protocol} listening on {host}:{port}" + (f" (worker {worker})" if which else ""))
        listening: Event = Status("listening", 0.0, {"protocol": spec.protocol, "host": host, "port": port, **which})
        hub.emit([(None, listening)])

    loop.set_exception_handler(_log_unexpected)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    ticker = asyncio.create_task(hub.run())
    watchdog = asyncio.create_task(server.watch())
    sweeper = asyncio.create_task(server.sweep())
    stopper = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(hub.failed.wait())
    try:
        await asyncio.wait([ticker, stopper, failed], return_when=asyncio.FIRST_COMPLETED)
        if ticker.done():
            ticker.result()  # the model failed: raise its error
        if hub.failure is not None:
            raise hub.failure
        for srv in listeners:
            srv.close()
        server.close_all()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(hub.idle(), 10.0)
    finally:
        sys.setswitchinterval(switch_interval)
        for srv in listeners:
            srv.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        ticker.cancel()
        watchdog.cancel()
        sweeper.cancel()
        stopper.cancel()
        failed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
