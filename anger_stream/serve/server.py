"""asyncio telephony servers around one Hub: Asterisk AudioSocket over TCP, Media Streams over WebSocket.

A connection only parses its protocol and hands audio bytes to the hub (hub.py), which scores every call in
one shared StreamSet. Connections are asyncio Protocols: each chunk of bytes goes straight into the sans-I/O
parsers (AudioSocket here, Media Streams in websocket.py), with no task, stream reader or timer per frame (at
50 frames per second per call, that per-frame machinery is what limits a server). One watchdog task closes
connections that stop sending.
Events go to stdout as JSON lines with the call id first; problems with one call go to stderr and end
that call only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import Event, Status, to_json
from . import audiosocket
from .hub import DuplicateCall, Hub, log

BACKLOG = 1024
"""Pending connections per listening socket (asyncio's default of 100 is short for a burst of calls)."""
SWITCH_INTERVAL_S = 0.0005
"""The GIL switch interval while serving. The event loop holds the GIL for most of each frame; a scoring
thread that released it (numpy, the model) waits up to this long to get it back, many times per tick.
Python's default of 5 ms made ticks crawl (docs/telephony.md has the A/B)."""


def peer_name(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


@dataclass(eq=False)
class Connection:
    """What the server tracks of an open connection: its call, its last sign of life, how to close it."""

    peer: str
    call_id: str  # "<protocol>:<peer>" until the protocol names the call
    close: Callable[[], None]
    seen: float  # event-loop time of the last data received
    idle_error: str  # the error reported when the watchdog closes it
    opened: bool = False  # the hub has the call
    over: bool = False  # the call has been ended or refused: nothing more is reported


class Server:
    """The connection handlers of both protocols, feeding one Hub."""

    def __init__(self, hub: Hub, read_timeout: float = 10.0, marks: bool = False, worker: int | None = None) -> None:
        self.hub = hub
        self.read_timeout = read_timeout
        self.marks = marks
        self.worker = worker  # this process's index under `serve --workers`, named in each call's start line
        self.connections: set[Connection] = set()

    def connect(self, protocol: str, peer: str, close: Callable[[], None]) -> Connection:
        idle_error = f"no {'data' if protocol == 'audiosocket' else 'message'} for {self.read_timeout:g} s"
        conn = Connection(peer, f"{protocol}:{peer}", close, asyncio.get_running_loop().time(), idle_error)
        self.connections.add(conn)
        return conn

    def disconnect(self, conn: Connection) -> None:
        """The connection is gone: a call still open ends as interrupted."""
        self.connections.discard(conn)
        self.end(conn, "interrupted")

    def name(self, conn: Connection, call_id: str) -> None:
        """The protocol named the connection's call; an id already being served is refused at once."""
        try:
            self.hub.check_free(call_id)
        except DuplicateCall as exc:
            self._refuse(conn, call_id, exc)
            return
        conn.call_id = call_id

    def _refuse(self, conn: Connection, call_id: str, exc: DuplicateCall) -> None:
        conn.call_id = f"{call_id}@{conn.peer}"  # the other connection owns that id
        self.fail(conn, str(exc))

    def open(
        self,
        conn: Connection,
        sample_rate: int,
        encoding: str,
        info: dict[str, Any],
        on_events: Callable[[list[Event]], None] | None = None,
    ) -> None:
        """Start the connection's call in the hub; a call id already being served (a race with `name`) is refused."""
        if self.worker is not None:
            info = {**info, "worker": self.worker}
        try:
            self.hub.open(conn.call_id, sample_rate, info, on_events, encoding)
        except DuplicateCall as exc:
            self._refuse(conn, conn.call_id, exc)
            return
        conn.opened = True

    def end(self, conn: Connection, state: str = "end", info: dict[str, Any] | None = None) -> None:
        """The call is over: its last windows are scored, then its final status line."""
        if conn.over:
            return
        conn.over = True
        if conn.opened:
            self.hub.end(conn.call_id, state, info)

    def fail(self, conn: Connection, message: str) -> None:
        """Log a call's error and report it: after its last windows if it started, at once otherwise."""
        if conn.over:
            return
        log(f"call {conn.call_id}: {message}; closing it")
        if conn.opened:
            self.end(conn, "error", {"error": message})
        else:
            conn.over = True
            self.hub.note(conn.call_id, Status("error", 0.0, {"error": message}))

    def close_all(self) -> None:
        """Shutdown: end every call as interrupted and close its connection."""
        for conn in list(self.connections):
            self.end(conn, "interrupted")
            conn.close()

    async def watch(self) -> None:
        """Close connections that sent nothing for read_timeout seconds (checked a few times per timeout)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.read_timeout / 4, 1.0))
            for conn in list(self.connections):
                if loop.time() - conn.seen > self.read_timeout:
                    self.fail(conn, conn.idle_error)
                    conn.close()


class AudioSocketConnection(asyncio.Protocol):
    """One AudioSocket connection: UUID, audio frames, hangup (or EOF), parsed as the bytes arrive."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = audiosocket.Parser()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.conn = self.server.connect("audiosocket", peer_name(transport.get_extra_info("peername")), transport.close)

    def data_received(self, data: bytes) -> None:
        self.conn.seen = self.loop.time()
        self.parser.receive_data(data)
        self._handle()

    def eof_received(self) -> bool:
        self.parser.receive_data(b"")
        self._handle()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.parser.received_anything:  # a reset port probe is not a call
            self.server.fail(self.conn, f"connection lost: {exc}")
        self.server.disconnect(self.conn)

    def _handle(self) -> None:
        """Act on every complete frame received; close the connection once the call is over."""
        server, conn, hub = self.server, self.conn, self.server.hub
        try:
            while not conn.over:
                event = self.parser.next_event()
                if event is audiosocket.NEED_DATA:
                    return
                if isinstance(event, audiosocket.Audio):
                    if not conn.opened:
                        server.open(conn, event.sample_rate, "s16le", {"protocol": "audiosocket", "peer": conn.peer})
                    if conn.opened:
                        hub.push(conn.call_id, event.pcm)
                elif isinstance(event, audiosocket.CallId):
                    server.name(conn, event.call_id)
                elif isinstance(event, audiosocket.Dtmf):
                    hub.note(conn.call_id, Status("dtmf", hub.t(conn.call_id), {"digit": event.digit}))
                elif isinstance(event, audiosocket.AsteriskError):
                    if event.code == 1 and conn.opened:  # the caller hung up
                        server.end(conn, "end", {"asterisk_error": 1})
                    else:
                        server.fail(conn, f"Asterisk reported error code {event.code}")
                else:  # Hangup or EOF; before any audio, a port probe (nothing received) gets no line
                    if not conn.opened and self.parser.received_anything:
                        hub.note(conn.call_id, Status("end", 0.0, {"windows": 0}))
                    server.end(conn)
        except audiosocket.ProtocolError as exc:
            server.fail(conn, f"protocol error: {exc}")
        self.transport.close()


@dataclass(frozen=True)
class Listen:
    protocol: str  # "audiosocket" or "mediastream"
    host: str
    port: int
    sock: socket.socket | None = None  # already listening on host:port (serve --workers)


def _log_unexpected(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's last resort, in one line instead of a traceback."""
    exc = context.get("exception")
    log(f"internal error: {context.get('message', '')}: {type(exc).__name__}: {exc}" if exc else context["message"])


class ListenError(Exception):
    """An address to listen on is taken, invalid or not allowed."""

    @classmethod
    def of(cls, spec: Listen, exc: OSError) -> ListenError:
        return cls(f"cannot listen on {spec.host}:{spec.port} ({spec.protocol}): {exc.strerror or exc}")


async def _listen(server: Server, spec: Listen) -> asyncio.Server:
    if spec.protocol == "audiosocket":
        protocol: type[asyncio.Protocol] = AudioSocketConnection
    else:
        from .websocket import MediaStreamConnection as protocol  # needs the `serve` extra (websockets)
    where: dict[str, Any] = {"sock": spec.sock} if spec.sock else {"host": spec.host, "port": spec.port}
    return await asyncio.get_running_loop().create_server(lambda: protocol(server), **where, backlog=BACKLOG)


async def serve(
    hub: Hub,
    listen: list[Listen],
    read_timeout: float = 10.0,
    marks: bool = False,
    worker: int | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; then end every call ("interrupted"), report it, and return.

    `worker`: this process's index under `serve --workers`, named in its `listening` and call `start` lines.
    """
    server = Server(hub, read_timeout, marks, worker)
    listeners = []
    for spec in listen:
        try:
            listeners.append(await _listen(server, spec))
        except OSError as exc:
            raise ListenError.of(spec, exc) from None
        host, port = listeners[-1].sockets[0].getsockname()[:2]
        which = {} if worker is None else {"worker": worker}
        log(f"{spec.protocol} listening on {host}:{port}" + (f" (worker {worker})" if which else ""))
        hub.emit(to_json(Status("listening", 0.0, {"protocol": spec.protocol, "host": host, "port": port, **which})))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(_log_unexpected)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    ticker = asyncio.create_task(hub.run())
    watchdog = asyncio.create_task(server.watch())
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
        stopper.cancel()
        failed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
