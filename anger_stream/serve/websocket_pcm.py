"""L16 audio over WebSocket, sans-I/O: FreeSWITCH's mod_audio_fork, Jambonz's `listen` verb, Vonage's WebSocket.

The platform sends one JSON text message of metadata first, then binary messages of 16-bit little-endian
PCM, mono or two channels interleaved (mod_audio_fork and Jambonz with mix type "stereo": the caller on
channel 0, the other party on channel 1). Each platform names things its own way; `metadata` reads them all:

- call id: `callSid` (Jambonz), else `callId`, `call_id` or `uuid` (mod_audio_fork's metadata argument and
  Vonage's NCCO `headers` carry whatever the dialplan or application puts there);
- sample rate: `sampleRate` (Jambonz; a number or "8k"/"16k" as mod_audio_fork's argument is written), else
  the `rate` of Vonage's `content-type` "audio/l16;rate=16000";
- channels: `channels`, else `mixType` ("mono" and "mixed": 1, "stereo": 2); 1 if neither is given.

Later text messages are DTMF (Vonage's `websocket:dtmf`, Jambonz's `dtmf` with passDtmf) or other
notifications, which are ignored. A call ends with the WebSocket. Anything malformed is a
`WebSocketPcmError`: the caller closes the connection.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .mediastream import MAX_ID, RATES, MediaStreamError, _quote, json_value

CALL_ID_KEYS = ("callSid", "callId", "call_id", "uuid")
MIX_TYPES = {"mono": 1, "mixed": 1, "stereo": 2}
SUBPROTOCOLS = ("audio.drachtio.org", "audio.jambonz.org")
"""The WebSocket subprotocols mod_audio_fork and Jambonz ask for (a client is also served without one)."""
WIDTH = 2
"""Bytes per sample (L16)."""


class WebSocketPcmError(MediaStreamError):
    """The peer broke the protocol; the connection cannot continue (a MediaStreamError, as the WebSocket
    handling it shares with Media Streams expects)."""


@dataclass(frozen=True)
class Metadata:
    call_id: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class Audio:
    """Whole sample frames of audio: one bytes object of L16 per channel."""

    channels: tuple[bytes, ...]


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class Notice:
    """A text message that is neither metadata nor DTMF (a platform's notification): nothing to do."""

    event: str


WebSocketPcmEvent = Metadata | Audio | Dtmf | Notice


def _rate(meta: dict[str, Any]) -> int:
    rate: Any = meta.get("sampleRate")
    if rate is None and isinstance(meta.get("content-type"), str):
        kind, _, params = meta["content-type"].partition(";")
        if kind.strip().lower() != "audio/l16":
            raise WebSocketPcmError(f"unsupported content-type {_quote(meta['content-type'])} (expected audio/l16)")
        rate = dict(p.strip().partition("=")[::2] for p in params.split(";")).get("rate")
    if isinstance(rate, str) and rate.lower().endswith("k") and rate[:-1].isdecimal():
        rate = int(rate[:-1]) * 1000
    elif isinstance(rate, str) and rate.isdecimal():
        rate = int(rate)
    if rate is None:
        raise WebSocketPcmError("the metadata names no sample rate (sampleRate, or content-type audio/l16;rate=N)")
    if rate not in RATES or isinstance(rate, bool):
        raise WebSocketPcmError(f"unsupported sample rate {_quote(rate)} (supported: {', '.join(map(str, RATES))})")
    return int(rate)


def _channels(meta: dict[str, Any]) -> int:
    if "channels" in meta:
        channels = meta["channels"]
    elif "mixType" in meta:
        channels = MIX_TYPES.get(meta["mixType"]) if isinstance(meta["mixType"], str) else None
        if channels is None:
            raise WebSocketPcmError(f"unknown mixType {_quote(meta['mixType'])} (known: {', '.join(MIX_TYPES)})")
    else:
        channels = 1
    if channels not in (1, 2) or isinstance(channels, bool):
        raise WebSocketPcmError(f"unsupported channels {_quote(channels)} (supported: 1, 2)")
    return int(channels)


def metadata(meta: dict[str, Any]) -> Metadata:
    """The call id, sample rate and channels of a platform's metadata message."""
    call_id = next((meta[k] for k in CALL_ID_KEYS if meta.get(k) not in (None, "")), None)
    if not isinstance(call_id, str):
        keys = ", ".join(CALL_ID_KEYS)
        raise WebSocketPcmError(f"the metadata names no call id as a string ({keys})")
    if len(call_id) > MAX_ID:
        raise WebSocketPcmError(f"call id longer than {MAX_ID} characters")
    return Metadata(call_id, _rate(meta), _channels(meta))


class Parser:
    """One connection: `receive(message)` -> event, or WebSocketPcmError. The stream ends with the WebSocket
    (`done` stays False: no message ends it)."""

    done = False

    def __init__(self) -> None:
        self.metadata: Metadata | None = None
        self._rest = b""  # the start of a sample frame split across messages

    def receive(self, message: str | bytes) -> WebSocketPcmEvent:
        if isinstance(message, bytes):
            return self._audio(message)
        msg = json_value(message, WebSocketPcmError)
        if not isinstance(msg, dict):
            raise WebSocketPcmError("text message is not a JSON object")
        if self.metadata is None:
            self.metadata = metadata(msg)
            return self.metadata
        event = msg.get("event")
        if not isinstance(event, str):
            raise WebSocketPcmError("a text message after the metadata has no event")
        if event.endswith("dtmf"):  # Vonage: websocket:dtmf {digit}; Jambonz: dtmf {dtmf}
            digit = msg.get("digit", msg.get("dtmf"))
            if not isinstance(digit, str) or len(digit) != 1:
                raise WebSocketPcmError(f"DTMF message without a one-character digit: {_quote(digit)}")
            return Dtmf(digit)
        return Notice(event)

    def _audio(self, data: bytes) -> Audio:
        if self.metadata is None:
            raise WebSocketPcmError("audio before the metadata text message")
        frame = WIDTH * self.metadata.channels
        if self._rest:
            data = self._rest + data
        cut = len(data) - len(data) % frame
        self._rest = data[cut:]
        whole = memoryview(data)[:cut]
        if self.metadata.channels == 1:
            return Audio((bytes(whole),))
        samples = whole.cast("h")  # only moved, never read as numbers: byte order does not matter
        return Audio(tuple(samples[c :: self.metadata.channels].tobytes() for c in range(self.metadata.channels)))


# Platform side: what a platform sends (simulators, tests).


def metadata_message(call_id: str, sample_rate: int = 8000, mix_type: str = "mono") -> str:
    """Metadata as Jambonz sends it (mod_audio_fork sends what its dialplan gives; Vonage its own keys)."""
    return json.dumps({"callSid": call_id, "sampleRate": sample_rate, "mixType": mix_type}, separators=(",", ":"))
