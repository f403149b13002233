"""Asterisk AudioSocket, sans-I/O: bytes in, call events out (h11 style), and frame encoders.

A frame is a 1-byte kind, a 2-byte big-endian payload length and the payload. Asterisk sends the call's
UUID first, then audio (signed linear 16-bit little-endian mono; 0x10 is 8 kHz, 0x11-0x18 are the higher
rates of newer res_audiosocket), DTMF digits and possibly an error; closing the socket or a 0x00 frame
ends the call. Anything else is an `AudioSocketError`: the caller closes the connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import Enum

import numpy as np

HANGUP, UUID, DTMF, AUDIO, ERROR = 0x00, 0x01, 0x03, 0x10, 0xFF
AUDIO_RATES = {
    0x10: 8_000,
    0x11: 12_000,
    0x12: 16_000,
    0x13: 24_000,
    0x14: 32_000,
    0x15: 44_100,
    0x16: 48_000,
    0x17: 96_000,
    0x18: 192_000,
}
"""Audio kinds -> sample rate (Asterisk's AST_AUDIOSOCKET_KIND_AUDIO, _AUDIO_SLIN12 ... _AUDIO_SLIN192)."""
HEADER = 3
MERGE_FRAMES = 64
"""Most consecutive audio frames that one `Audio` event carries (they arrive in one read under load); frames
shorter than the parser's `merge_min_s` are events of their own (a server counts those)."""


class AudioSocketError(Exception):
    """The peer broke the AudioSocket protocol; the connection cannot continue."""


class _Need(Enum):
    NEED_DATA = "need data"


NEED_DATA = _Need.NEED_DATA
"""`next_event` has nothing complete yet: feed more bytes."""


@dataclass(frozen=True)
class CallId:
    """The call's UUID (always the first frame)."""

    call_id: str


@dataclass(frozen=True)
class Audio:
    """Audio: `pcm` is signed 16-bit little-endian samples at `sample_rate`, as received in `frames`
    consecutive frames (all of a call's complete audio frames in a row, up to MERGE_FRAMES)."""

    pcm: bytes
    sample_rate: int
    frames: int = 1


@dataclass(frozen=True)
class AudioSocketDtmf:
    digit: str


@dataclass(frozen=True)
class Hangup:
    """The call ended: a hangup frame or the socket closed between frames."""


@dataclass(frozen=True)
class AsteriskError:
    """Asterisk reported an error (bit-packed code: 1 caller hung up, 2 frame forwarding, 4 memory)."""

    code: int | None


AudioSocketEvent = CallId | Audio | AudioSocketDtmf | Hangup | AsteriskError


class Parser:
    """Incremental AudioSocket parser for one connection.

    `receive_data(b"")` signals end of input. `next_event()` returns an event, NEED_DATA, or raises
    AudioSocketError; after Hangup or AsteriskError the call is over and no more events come.
    """

    def __init__(self, merge_min_s: float = 0.0) -> None:
        self._merge_min_s = merge_min_s  # audio frames shorter than this are never merged (each is an event)
        self._merge_min = 0  # the same in bytes, once the rate is known
        self._buf = bytearray()
        self._eof = False
        self._call_id: str | None = None
        self._rate: int | None = None
        self._kind: int | None = None  # the call's audio frame kind, once its first audio frame is in
        self.done = False

    @property
    def received_anything(self) -> bool:
        """Whether any frame started (a connection closed before that is a port probe, not a call)."""
        return self._call_id is not None or bool(self._buf)

    def receive_data(self, data: bytes) -> None:
        if self.done:
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> AudioSocketEvent | _Need:
        if self.done:
            return NEED_DATA
        if len(self._buf) < HEADER or len(self._buf) < HEADER + int.from_bytes(self._buf[1:3], "big"):
            if not self._eof:
                return NEED_DATA
            if self._buf:
                raise AudioSocketError(f"connection closed inside a frame ({len(self._buf)} bytes pending)")
            self.done = True
            return Hangup()
        kind, length = self._buf[0], int.from_bytes(self._buf[1:3], "big")
        if kind in AUDIO_RATES and kind == self._kind:
            return self._audio(kind, length)
        payload = bytes(self._buf[HEADER : HEADER + length])
        del self._buf[: HEADER + length]
        return self._event(kind, payload)

    def _audio(self, kind: int, length: int) -> Audio:
        """The call's next complete audio frames of its kind, as one event (each payload checked as alone)."""
        if length % 2:
            raise AudioSocketError(f"audio payload of {length} bytes (16-bit samples need an even count)")
        buf, n, least = self._buf, len(self._buf), self._merge_min
        spans, end = [(HEADER, HEADER + length)], HEADER + length
        while length >= least and len(spans) < MERGE_FRAMES and n >= end + HEADER and buf[end] == kind:
            size = int.from_bytes(buf[end + 1 : end + 3], "big")
            if size % 2 or size < least or end + HEADER + size > n:  # odd or short: an event of its own
                break
            spans.append((end + HEADER, end + HEADER + size))
            end += HEADER + size
        view = memoryview(buf)
        pcm = bytes(view[HEADER:end]) if len(spans) == 1 else b"".join([view[a:b] for a, b in spans])
        view.release()
        del buf[:end]
        return Audio(pcm, AUDIO_RATES[kind], len(spans))

    def _event(self, kind: int, payload: bytes) -> AudioSocketEvent:
        if self._call_id is None and kind not in (UUID, HANGUP, ERROR):
            raise AudioSocketError(f"expected the UUID frame first, got kind 0x{kind:02x}")
        if kind == UUID:
            if self._call_id is not None:
                raise AudioSocketError("a second UUID frame")
            if len(payload) != 16:
                raise AudioSocketError(f"UUID payload of {len(payload)} bytes (expected 16)")
            self._call_id = str(uuid.UUID(bytes=payload))
            return CallId(self._call_id)
        if kind in AUDIO_RATES:
            rate = AUDIO_RATES[kind]
            if len(payload) % 2:
                raise AudioSocketError(f"audio payload of {len(payload)} bytes (16-bit samples need an even count)")
            if self._rate is not None and rate != self._rate:
                raise AudioSocketError(f"sample rate changed from {self._rate} to {rate} Hz within the call")
            self._rate, self._kind, self._merge_min = rate, kind, 2 * round(self._merge_min_s * rate)
            return Audio(payload, rate)
        if kind == DTMF:
            if len(payload) != 1 or not 0x20 < payload[0] < 0x7F:
                raise AudioSocketError("DTMF payload must be one printable ASCII byte")
            return AudioSocketDtmf(payload.decode("ascii"))
        if kind == HANGUP:
            self.done = True
            return Hangup()
        if kind == ERROR:
            self.done = True
            return AsteriskError(payload[0] if payload else None)
        raise AudioSocketError(f"unknown frame kind 0x{kind:02x}")


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One AudioSocket frame."""
    if len(payload) > 0xFFFF:
        raise ValueError("an AudioSocket payload holds at most 65535 bytes")
    return bytes([kind]) + len(payload).to_bytes(2, "big") + payload


def uuid_frame(call_id: str | uuid.UUID) -> bytes:
    return frame(UUID, uuid.UUID(str(call_id)).bytes)


def audio_frame(samples: np.ndarray, sample_rate: int = 8_000) -> bytes:
    """Audio frame for 16-bit samples at one of the rates in AUDIO_RATES."""
    kind = next((k for k, r in AUDIO_RATES.items() if r == sample_rate), None)
    if kind is None:
        raise ValueError(f"AudioSocket carries no {sample_rate} Hz audio")
    return frame(kind, np.asarray(samples, dtype="<i2").tobytes())


def dtmf_frame(digit: str) -> bytes:
    return frame(DTMF, digit.encode("ascii"))


def hangup_frame() -> bytes:
    return frame(HANGUP)
