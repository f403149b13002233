"""Media Streams connections: websockets' sans-I/O protocol driven by an asyncio Protocol.

The WebSocket handshake and framing are the `websockets` package's (`ServerProtocol`: it answers pings and
close frames and enforces the size limit); messages go to the Media Streams parser as their frames arrive,
with no task, queue or future per message. At 50 messages per second per call, that per-message machinery
of a coroutine-per-connection server was most of what limited the calls a process holds.
"""

from __future__ import annotations

import asyncio
import logging

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..events import Event, Status, Window
from . import mediastream
from .server import Connection, Server, peer_name

MAX_MESSAGE = 1 << 16
"""Bytes per message; larger ones close the connection with 1009 (Twilio's media messages are ~300)."""
CLOSE_WAIT_S = 2.0
"""After sending a close frame, how long the peer has to close the TCP connection before it is aborted."""
QUIET = logging.getLogger("anger_stream.serve.websockets")
QUIET.setLevel(logging.CRITICAL)  # rejected handshakes would be logged with tracebacks
CLEAN_CLOSE = {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}


class MediaStreamConnection(asyncio.Protocol):
    """One Media Streams WebSocket: handshake (or `GET /health`), then connected, start, media..., stop."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.ws = ServerProtocol(max_size=MAX_MESSAGE, logger=QUIET)
        self.parser = mediastream.Parser()
        self.conn: Connection | None = None  # once the handshake is done
        self.fragments: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()
        self.peer = peer_name(transport.get_extra_info("peername"))
        self.handshake_timer = self.loop.call_later(self.server.read_timeout, transport.abort)

    def data_received(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.seen = self.loop.time()
        self.ws.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self.ws.receive_eof()
        self._process()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.handshake_timer.cancel()
        if self.conn is None:
            return
        if exc is not None:
            self.server.fail(self.conn, f"connection lost: {exc}")
        else:
            self.server.fail(self.conn, "connection lost: closed without a close frame")  # no-op if it ended
        self.server.disconnect(self.conn)

    def _process(self) -> None:
        """Act on what the WebSocket layer received; send what it has to send."""
        for event in self.ws.events_received():
            if isinstance(event, Request):
                self._handshake(event)
            elif self.conn is None:  # frames pipelined after `GET /health` or a refused handshake
                continue
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self._data(event)
            elif event.opcode is Opcode.CLOSE:
                self._closed_by_peer()
        if self.conn is not None and self.ws.parser_exc is not None:
            exc = self.ws.parser_exc
            reason = "closed without a close frame" if isinstance(exc, EOFError) else f"WebSocket error: {exc}"
            self.server.fail(self.conn, f"connection lost: {reason}")
        self._flush()

    def _flush(self) -> None:
        for data in self.ws.data_to_send():
            if self.transport.is_closing():
                continue
            if data:
                self.transport.write(data)
            else:  # the WebSocket layer is done: a server closes the TCP connection
                self.transport.close()

    def _handshake(self, request: Request) -> None:
        self.handshake_timer.cancel()
        response = self.ws.reject(200, "OK\n") if request.path == "/health" else self.ws.accept(request)
        self.ws.send_response(response)
        if response.status_code == 101:
            self.conn = self.server.connect("mediastream", self.peer, lambda: self.close(CloseCode.GOING_AWAY))

    def _data(self, frame: Frame) -> None:
        """A whole message (single-frame, or the last fragment of one) goes to the Media Streams parser."""
        self.fragments.append(frame.data)
        if frame.opcode is not Opcode.CONT:
            self.opcode = frame.opcode
        if not frame.fin:
            return
        data = b"".join(self.fragments) if len(self.fragments) > 1 else self.fragments[0]
        self.fragments = []
        conn = self.conn
        if conn.over:  # the call was refused or has ended: the rest is discarded while the socket closes
            return
        try:
            if self.opcode is Opcode.TEXT:
                try:
                    data = data.decode()
                except UnicodeDecodeError:
                    raise mediastream.ProtocolError("text message is not valid UTF-8") from None
            self._message(conn, self.parser.receive(data))
        except mediastream.ProtocolError as exc:
            self.server.fail(conn, f"protocol error: {exc}")
        if conn.over:
            self.close(CloseCode.NORMAL_CLOSURE if self.parser.done else CloseCode.POLICY_VIOLATION)

    def _message(self, conn: Connection, event: mediastream.Event) -> None:
        server, hub = self.server, self.server.hub
        if isinstance(event, mediastream.Media):
            if event.track == "inbound":
                hub.push(conn.call_id, event.payload)
        elif isinstance(event, mediastream.Start):
            server.name(conn, event.call_id)
            if conn.over:
                return
            info = {"protocol": "mediastream", "peer": conn.peer, "stream": event.stream_sid}
            law = mediastream.ENCODINGS[event.encoding]
            server.open(conn, event.sample_rate, law, info, self._send_marks if server.marks else None)
        elif isinstance(event, mediastream.Dtmf):
            hub.note(conn.call_id, Status("dtmf", hub.t(conn.call_id), {"digit": event.digit}))
        elif isinstance(event, mediastream.Stop):
            server.end(conn)

    def _closed_by_peer(self) -> None:
        """A close frame without `stop`: a clean close ends the call, any other code is an error."""
        received = self.ws.close_rcvd
        if received is None or received.code in CLEAN_CLOSE:
            self.server.end(self.conn, "end", {"stop": False})
        else:
            self.server.fail(self.conn, f"connection closed by the peer with {received}")

    def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; abort the TCP connection if the peer does not finish it."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
        self.loop.call_later(CLOSE_WAIT_S, self.transport.abort)

    def _send_marks(self, events: list[Event]) -> None:
        """--marks: each anger_start / anger_end goes back to the platform as a `mark` message."""
        for e in events:
            if not isinstance(e, Window | Status) and self.ws.state is State.OPEN:
                name = f"{e.to_dict()['type']}:{e.t:.3f}"
                self.ws.send_text(mediastream.mark_message(self.parser.start.stream_sid, name).encode())
        self._flush()
