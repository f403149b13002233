"""Asterisk AudioSocket connections: the sans-I/O parser (audiosocket.py) driven by an asyncio Protocol."""

from __future__ import annotations

from ..events import Status
from . import audiosocket
from .server import SHORT_FRAME_S, CallConnection, Server

BATCH_FRAMES = 2
"""Frames (of the size of the call's first) that a read waits for: one wake-up per 40 ms of 20 ms frames,
the least time between ticks (hub.TICK_INTERVAL_S), so the lines come no later."""


class AudioSocketConnection(CallConnection):
    """One AudioSocket connection: UUID, audio frames, hangup (or EOF), parsed as the bytes arrive.

    The call opens with its first audio frame (which gives the sample rate); DTMF before that is ignored.
    """

    protocol = "audiosocket"
    idle_error = "no audio frame"

    def __init__(self, server: Server) -> None:
        super().__init__(server)
        self._batch = 0  # bytes a read waits for once the call is open (`batch_reads`)
        self.parser = audiosocket.Parser(merge_min_s=SHORT_FRAME_S)  # short frames are counted one by one

    def _feed(self, data: bytes) -> None:
        self.parser.receive_data(data)

    def eof_received(self) -> bool:
        self.parser.receive_data(b"")
        return super().eof_received()

    def _lost(self, exc: Exception | None) -> None:
        if exc is not None and self.parser.received_anything:  # a reset port probe is not a call
            self.fail(f"connection lost: {exc}", "connection_lost")

    def quiet(self) -> bool:
        return not self.parser.received_anything

    def _work(self, budget: int) -> bool:
        next_event, handle = self.parser.next_event, self._handle
        try:
            while budget > 0:
                if self.over or self.held:
                    break
                event = next_event()
                if event is audiosocket.NEED_DATA:
                    break
                handle(event)
                budget -= event.frames if type(event) is audiosocket.Audio else 1
            else:
                return True
        except audiosocket.AudioSocketError as exc:
            self.fail(f"protocol error: {exc}", "protocol")
        if self.over:
            self.transport.close()
        return False

    def _handle(self, event: audiosocket.AudioSocketEvent) -> None:
        if isinstance(event, audiosocket.Audio):
            if not self.opened:
                self.open(event.sample_rate, "s16le", {"protocol": self.protocol, "peer": self.peer})
                self._batch = BATCH_FRAMES * (audiosocket.HEADER + len(event.pcm))
                if self.opened:
                    self.batch_reads(self._batch)
            elif event.frames >= BATCH_FRAMES and self not in self.server.batching and not self.over:
                self.batch_reads(self._batch)  # frames come in a steady stream again
            if self.opened:
                self.push(event.pcm)
        elif isinstance(event, audiosocket.CallId):
            self.saw()
            self.name(event.call_id)
        elif isinstance(event, audiosocket.AudioSocketDtmf):
            self.dtmf(event.digit)
        elif isinstance(event, audiosocket.AsteriskError):
            if event.code == 1 and self.opened:  # the caller hung up
                self.end("end", {"asterisk_error": 1})
            else:
                self.fail(f"Asterisk reported error code {event.code}", "asterisk")
        else:  # Hangup or EOF; before any audio, a port probe (nothing received) gets no line
            if not self.opened and self.parser.received_anything:
                self.hub.emit([(self.call_id, Status("end", 0.0, {"windows": 0}))])
            self.end()
