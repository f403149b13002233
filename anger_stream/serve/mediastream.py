"""Twilio-style Media Streams, sans-I/O: WebSocket text messages in, call events out, and message builders.

The platform sends `connected`, then one `start` (streamSid, callSid, mediaFormat), `media` messages with
base64 G.711 audio, `dtmf` and `mark` messages, and a final `stop`. The server may send a `mark` back;
on a bidirectional stream the platform echoes it (see docs/telephony.md). Anything malformed is a
`MediaStreamError`: the caller closes the connection.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

ENCODINGS = {"audio/x-mulaw": "mulaw", "audio/x-alaw": "alaw"}
RATES = (8_000, 16_000)
"""Sample rates accepted: Twilio's 8 kHz, and the 16 kHz of wideband platforms (each rate costs its own resampler)."""
MAX_ID = 128
"""Longest stream or call id accepted (Twilio's SIDs have 34 characters); ids are echoed in every line."""


class MediaStreamError(Exception):
    """The peer broke the Media Streams protocol; the connection cannot continue."""


@dataclass(frozen=True)
class Connected:
    protocol: str


@dataclass(frozen=True)
class Start:
    stream_sid: str
    call_sid: str
    sample_rate: int
    encoding: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def call_id(self) -> str:
        """The call SID, or the stream SID when the platform sends no call SID."""
        return self.call_sid or self.stream_sid


@dataclass(frozen=True)
class Media:
    """One track's audio: `payload` is G.711 bytes in `law` ("mulaw" or "alaw"), as received."""

    payload: bytes
    law: str
    track: str
    chunk: int | None
    timestamp_ms: int | None


@dataclass(frozen=True)
class MediaStreamDtmf:
    digit: str


@dataclass(frozen=True)
class Mark:
    name: str


@dataclass(frozen=True)
class MediaStreamStop:
    """The stream ended."""


MediaStreamEvent = Connected | Start | Media | MediaStreamDtmf | Mark | MediaStreamStop


def _get(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MediaStreamError(f"{where}.{key} is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def _quote(value: Any, limit: int = 40) -> str:
    """repr of a value from the peer, cut short: error messages go into JSON lines."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None


class _NotJson(Exception):
    """NaN, Infinity or -Infinity in a message: Python's parser takes them, JSON has no such values."""


def _refuse(name: str) -> None:
    raise _NotJson(name)


_DECODER = json.JSONDecoder(parse_constant=_refuse)
"""One decoder for every message (json.loads with an option builds a new one per call: 2.2 us of 3.6)."""


def json_value(message: str, error: type[MediaStreamError] = MediaStreamError) -> Any:
    """A message's JSON value; `error` for invalid JSON, NaN or Infinity, or nesting so deep that Python's
    parser (which recurses once per level) gives up."""
    try:
        return _DECODER.decode(message)
    except _NotJson as exc:
        raise error(f"invalid JSON: {exc} is not a JSON value") from None
    except ValueError as exc:
        raise error(f"invalid JSON: {exc}") from None
    except RecursionError:
        raise error("invalid JSON: nested too deep") from None


class Parser:
    """One Media Streams connection: `receive(message)` -> event, or MediaStreamError. Stops after `stop`."""

    def __init__(self) -> None:
        self.start: Start | None = None
        self.done = False
        self._law = "mulaw"
        self._connected = False

    def receive(self, message: str | bytes) -> MediaStreamEvent:
        if self.done:
            raise MediaStreamError("message after stop")
        if not isinstance(message, str):
            raise MediaStreamError("binary WebSocket message (Media Streams messages are JSON text)")
        msg = json_value(message)
        if not isinstance(msg, dict):
            raise MediaStreamError("message is not a JSON object")
        event = _get(msg, "event", str, "message")
        if event == "connected":
            if self._connected or self.start is not None:
                raise MediaStreamError("a second 'connected' or one after 'start'")
            self._connected = True
            return Connected(str(msg.get("protocol", "")))
        if event == "start":
            return self._start(msg)
        if self.start is None:
            raise MediaStreamError(f"{_quote(event)} before 'start'")
        sid = msg.get("streamSid")
        if sid is not None and sid != self.start.stream_sid:
            raise MediaStreamError(f"streamSid {_quote(sid)} does not match the stream's {self.start.stream_sid!r}")
        if event == "media":
            return self._media(_get(msg, "media", dict, "message"))
        if event == "dtmf":
            digit = _get(_get(msg, "dtmf", dict, "message"), "digit", str, "dtmf")
            if len(digit) != 1 or not " " < digit < "\x7f":
                raise MediaStreamError(f"dtmf.digit {_quote(digit)} is not one printable ASCII character")
            return MediaStreamDtmf(digit)
        if event == "mark":
            return Mark(_get(_get(msg, "mark", dict, "message"), "name", str, "mark"))
        if event == "stop":
            self.done = True
            return MediaStreamStop()
        raise MediaStreamError(f"unknown event {_quote(event)}")

    def _start(self, msg: dict[str, Any]) -> Start:
        if self.start is not None:
            raise MediaStreamError("a second 'start'")
        start = _get(msg, "start", dict, "message")
        stream_sid = msg.get("streamSid") or start.get("streamSid")
        if not isinstance(stream_sid, str) or not stream_sid:
            raise MediaStreamError("start.streamSid is missing")
        fmt = _get(start, "mediaFormat", dict, "start")
        encoding = _get(fmt, "encoding", str, "start.mediaFormat")
        if encoding not in ENCODINGS:
            raise MediaStreamError(f"unsupported encoding {_quote(encoding)} (supported: {', '.join(ENCODINGS)})")
        rate = _get(fmt, "sampleRate", int, "start.mediaFormat")
        if rate not in RATES:
            raise MediaStreamError(f"unsupported sample rate {rate} (supported: {', '.join(map(str, RATES))})")
        if fmt.get("channels", 1) != 1:
            raise MediaStreamError(f"only mono streams are supported, not {_quote(fmt.get('channels'))} channels")
        call_sid = start.get("callSid", "")
        tracks = start.get("tracks", ["inbound"])
        params = start.get("customParameters") or {}
        if not isinstance(call_sid, str) or not isinstance(tracks, list) or not isinstance(params, dict):
            raise MediaStreamError("start.callSid, start.tracks or start.customParameters has the wrong type")
        if len(stream_sid) > MAX_ID or len(call_sid) > MAX_ID:
            raise MediaStreamError(f"streamSid or callSid longer than {MAX_ID} characters")
        self._law = ENCODINGS[encoding]
        self.start = Start(stream_sid, call_sid, rate, encoding, tuple(map(str, tracks)), params)
        return self.start

    def _media(self, media: dict[str, Any]) -> Media:
        payload = _get(media, "payload", str, "media")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MediaStreamError(f"media.payload is not valid base64: {exc}") from None
        track = media.get("track", "inbound")
        return Media(
            data,
            self._law,
            str(track),
            _int_or_none(media.get("chunk")),
            _int_or_none(media.get("timestamp")),
        )


def _dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"))


def mark_message(stream_sid: str, name: str) -> str:
    """The `mark` a server sends on a bidirectional stream (echoed once the audio before it has played)."""
    return _dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


# Platform side: what a telephony platform sends (simulators, tests, the load test).


def connected_message() -> str:
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(stream_sid: str, call_sid: str, encoding: str = "audio/x-mulaw", sample_rate: int = 8000) -> str:
    fmt = {"encoding": encoding, "sampleRate": sample_rate, "channels": 1}
    start = {"streamSid": stream_sid, "callSid": call_sid, "tracks": ["inbound"], "mediaFormat": fmt}
    return _dumps({"event": "start", "sequenceNumber": "1", "streamSid": stream_sid, "start": start})


def media_message(stream_sid: str, payload: bytes, chunk: int, timestamp_ms: int, track: str = "inbound") -> str:
    media = {
        "track": track,
        "chunk": str(chunk),
        "timestamp": str(timestamp_ms),
        "payload": base64.b64encode(payload).decode("ascii"),
    }
    return _dumps({"event": "media", "streamSid": stream_sid, "media": media})


def dtmf_message(stream_sid: str, digit: str) -> str:
    return _dumps({"event": "dtmf", "streamSid": stream_sid, "dtmf": {"track": "inbound_track", "digit": digit}})


def stop_message(stream_sid: str, call_sid: str) -> str:
    return _dumps({"event": "stop", "streamSid": stream_sid, "stop": {"callSid": call_sid}})
