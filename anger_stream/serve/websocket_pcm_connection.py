"""L16-over-WebSocket connections: the WebSocket handling of Media Streams (handshake, framing, limits, token,
TLS) with the parser of websocket_pcm.py; a two-channel call is scored as one stream per channel."""

from __future__ import annotations

from collections.abc import Sequence

from websockets.server import ServerProtocol

from . import websocket_pcm
from .mediastream_connection import MAX_MESSAGE, QUIET, MediaStreamConnection
from .server import Server


def _subprotocol(_: ServerProtocol, offered: Sequence[str]) -> str | None:
    """The platform's subprotocol if it asks for one we know (libwebsockets clients want it echoed)."""
    return next((s for s in offered if s in websocket_pcm.SUBPROTOCOLS), None)


class WebSocketPcmConnection(MediaStreamConnection):
    """One WebSocket: handshake (or `GET /health`), metadata, then binary L16 audio until the WebSocket closes."""

    protocol = "websocket-pcm"
    idle_error = "no audio message"

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self.ws = ServerProtocol(max_size=MAX_MESSAGE, logger=QUIET, select_subprotocol=_subprotocol)
        self.parser = websocket_pcm.Parser()

    def _message(self, event: websocket_pcm.WebSocketPcmEvent) -> None:
        if isinstance(event, websocket_pcm.Audio):
            if self.opened:
                for channel, pcm in enumerate(event.channels):
                    self.push(pcm, channel)
        elif isinstance(event, websocket_pcm.Metadata):
            self.name(event.call_id)
            if self.over:
                return
            info = {"protocol": self.protocol, "peer": self.peer}
            self.open(event.sample_rate, "s16le", info, channels=event.channels)
            self.saw()
        elif isinstance(event, websocket_pcm.Dtmf):
            self.dtmf(event.digit)
        elif isinstance(event, websocket_pcm.Notice):
            self.counted("notices")
