"""Media Streams connections: websockets' sans-I/O protocol driven by an asyncio Protocol.

The WebSocket handshake and framing are the `websockets` package's (`ServerProtocol`: it answers pings and
close frames and enforces the size limit); messages go to the Media Streams parser as their frames arrive,
with no task, queue or future per message. At 50 messages per second per call, that per-message machinery
of a coroutine-per-connection server was most of what limited the calls a process holds. Bytes go to the
WebSocket layer FEED_BYTES at a time, so a flood of small frames is handled in turns like everything else.
"""

from __future__ import annotations

import logging
from collections import deque
from http import HTTPStatus

from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from ..events import Event, Status, Window
from . import mediastream
from .log import log
from .security import Refusal
from .server import CallConnection, Server

MAX_MESSAGE = 1 << 16
"""Bytes per message; larger ones close the connection with 1009 (Twilio's media messages are ~300)."""
FEED_BYTES = 4096
"""Bytes handed to the WebSocket layer at a time."""
CLOSE_WAIT_S = 2.0
"""After sending a close frame, how long the peer has to close the TCP connection before it is aborted."""
QUIET = logging.getLogger("anger_stream.serve.websockets")
QUIET.setLevel(logging.CRITICAL)  # rejected handshakes would be logged with tracebacks
CLEAN_CLOSE = {CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD}
END_OF_REQUEST = b"\r\n\r\n"


class MediaStreamConnection(CallConnection):
    """One Media Streams WebSocket: handshake (or `GET /health`), then connected, start, media..., stop."""

    protocol = "mediastream"
    idle_error = "no media message"

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.ws = ServerProtocol(max_size=MAX_MESSAGE, logger=QUIET)
        self.parser = mediastream.Parser()
        self.handshaken = False  # a WebSocket is open (not `GET /health`, not a refused request)
        self.fragments: list[bytes] = []
        self._inbox = bytearray()
        self._frames: deque[Request | Frame] = deque()
        self._eof_fed = False
        self._ws_done = False

    def _feed(self, data: bytes) -> None:
        self._inbox += data

    def quiet(self) -> bool:
        return not self.handshaken

    def _lost(self, exc: Exception | None) -> None:
        if not self.handshaken:
            return
        if exc is not None:
            self.fail(f"connection lost: {exc}", "connection_lost")
        else:
            self.fail("connection lost: closed without a close frame", "connection_lost")  # no-op if the call has ended

    def _work(self, budget: int) -> bool:
        return all(not self.held and not self.transport.is_closing() and self._step() for _ in range(budget))

    def _step(self) -> bool:
        """Handle one frame (or feed the WebSocket layer more bytes); False when there is nothing to do."""
        if self._frames:
            self._received(self._frames.popleft())
            self._check_parser()
        elif self._inbox and self.ws.state is State.CONNECTING:
            # the request alone: what is pipelined after it waits for the answer (and is dropped after a refusal)
            end = self._inbox.find(END_OF_REQUEST)
            n = len(self._inbox) if end < 0 else end + len(END_OF_REQUEST)
            self._receive(n)
        elif self._inbox and self.handshaken:
            self._receive(FEED_BYTES)
        elif self.eof and not self._eof_fed:
            self._eof_fed = True
            self.ws.receive_eof()
            self._after_receive()
        else:
            self._inbox.clear()  # after a refused handshake: nothing more is read
            return False
        return True

    def _receive(self, n: int) -> None:
        data = bytes(self._inbox[:n])
        del self._inbox[:n]
        self.ws.receive_data(data)
        self._after_receive()

    def _after_receive(self) -> None:
        self._frames.extend(self.ws.events_received())
        self._check_parser()
        self._flush()

    def _check_parser(self) -> None:
        """Once the frames before it have been handled: an error of the WebSocket layer ends the call."""
        if self.handshaken and not self._frames and self.ws.parser_exc is not None:
            exc = self.ws.parser_exc
            reason = "closed without a close frame" if isinstance(exc, EOFError) else f"WebSocket error: {exc}"
            self.fail(f"connection lost: {reason}", "connection_lost")

    def _received(self, event: Request | Frame) -> None:
        if isinstance(event, Request):
            self._handshake(event)
        elif not self.handshaken:
            return
        elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
            self._data(event)
        elif event.opcode is Opcode.CLOSE:
            self._closed_by_peer()
        elif event.opcode is Opcode.PING:
            self.counted("pings")  # websockets answers it
        elif event.opcode is Opcode.PONG:
            self.counted("pongs")
        self._flush()

    def _flush(self) -> None:
        """Send what the WebSocket layer has to send; once it is done, close the TCP connection (a server's
        part), after the frames it has already parsed have been handled."""
        for data in self.ws.data_to_send():
            if not data:
                self._ws_done = True
            elif not self.transport.is_closing():
                self.transport.write(data)
        if self._ws_done and not self._frames:
            self.transport.close()

    def _handshake(self, request: Request) -> None:
        if request.path == "/health":
            response = self.ws.reject(200, "OK\n")
        elif refusal := self.server.policy.refuse_upgrade(request.path, request.headers):
            response = self._refuse(refusal)
        else:
            response = self.ws.accept(request)
        self.ws.send_response(response)
        if response.status_code == 101:
            self.handshaken = True
            self.saw()

    def _refuse(self, refusal: Refusal) -> Response:
        """An upgrade without the credential the policy requires: 401 or 403, one line on stderr, no call."""
        log(f"refused {self.protocol} connection from {self.peer}: {refusal.reason}", self.host)
        response = self.ws.reject(refusal.status, f"{HTTPStatus(refusal.status).phrase}\n")
        if refusal.status == HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def _data(self, frame: Frame) -> None:
        """A whole message (single-frame, or the last fragment of one) goes to the Media Streams parser."""
        self.fragments.append(frame.data)
        if frame.opcode is not Opcode.CONT:
            self.opcode = frame.opcode
        if not frame.fin:
            return
        data = b"".join(self.fragments) if len(self.fragments) > 1 else self.fragments[0]
        self.fragments = []
        if self.over:  # the call was refused or has ended: the rest is discarded while the socket closes
            return
        try:
            if self.opcode is Opcode.TEXT:
                try:
                    data = data.decode()
                except UnicodeDecodeError:
                    raise mediastream.MediaStreamError("text message is not valid UTF-8") from None
            self._message(self.parser.receive(data))
        except mediastream.MediaStreamError as exc:
            self.fail(f"protocol error: {exc}", "protocol")
        if self.over:
            self.close(CloseCode.NORMAL_CLOSURE if self.parser.done else CloseCode.POLICY_VIOLATION)

    def _message(self, event: mediastream.MediaStreamEvent) -> None:
        if isinstance(event, mediastream.Media):
            if event.track != "inbound":
                self.counted("media of other tracks")
            elif self.opened:
                self.push(event.payload)
        elif isinstance(event, mediastream.Start):
            self.name(event.call_id)
            if self.over:
                return
            info = {"protocol": self.protocol, "peer": self.peer, "stream": event.stream_sid}
            law = mediastream.ENCODINGS[event.encoding]
            self.open(event.sample_rate, law, info, self._send_marks if self.server.marks else None)
            self.saw()
        elif isinstance(event, mediastream.MediaStreamDtmf):
            self.dtmf(event.digit)
        elif isinstance(event, mediastream.Mark):
            self.counted("marks")
        elif isinstance(event, mediastream.MediaStreamStop):
            self.end()

    def _closed_by_peer(self) -> None:
        """A close frame without `stop`: a clean close ends the call, any other code is an error."""
        received = self.ws.close_rcvd
        if received is None or received.code in CLEAN_CLOSE:
            self.end("end", {"stop": False})
        else:
            self.fail(f"connection closed by the peer with {received}", "closed_by_peer")

    def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
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
