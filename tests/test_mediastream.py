"""Media Streams messages (sans-I/O parser and builders)."""

from __future__ import annotations

import base64
import json

import pytest

from anger_stream.serve import mediastream as m

SID, CALL = "MZ0123", "CA0123"


def _started(encoding: str = "audio/x-mulaw") -> m.Parser:
    p = m.Parser()
    assert isinstance(p.receive(m.connected_message()), m.Connected)
    start = p.receive(m.start_message(SID, CALL, encoding))
    assert start == p.start and start.call_id == CALL and start.sample_rate == 8000
    return p


def test_a_stream_in_order() -> None:
    p = _started()
    payload = bytes(range(160))
    media = p.receive(m.media_message(SID, payload, 1, 0))
    assert media.track == "inbound" and media.chunk == 1 and media.timestamp_ms == 0
    assert media.payload == payload and media.law == "mulaw"  # decoded once per tick, by the scoring thread
    assert p.receive(m.dtmf_message(SID, "7")) == m.MediaStreamDtmf("7")
    assert p.receive(json.dumps({"event": "mark", "streamSid": SID, "mark": {"name": "x"}})) == m.Mark("x")
    assert isinstance(p.receive(m.stop_message(SID, CALL)), m.MediaStreamStop)
    with pytest.raises(m.MediaStreamError, match="after stop"):
        p.receive(m.media_message(SID, payload, 2, 20))


def test_alaw_streams_are_decoded_as_alaw() -> None:
    p = _started("audio/x-alaw")
    media = p.receive(m.media_message(SID, b"\x00\x55\xd5", 1, 0))
    assert media.payload == b"\x00\x55\xd5" and media.law == "alaw"


def test_call_id_falls_back_to_the_stream_sid() -> None:
    msg = json.loads(m.start_message(SID, CALL))
    del msg["start"]["callSid"]
    assert m.Parser().receive(json.dumps(msg)).call_id == SID


def test_mark_message_format() -> None:
    assert json.loads(m.mark_message(SID, "anger_start:3.600")) == {
        "event": "mark",
        "streamSid": SID,
        "mark": {"name": "anger_start:3.600"},
    }


def _start_with(**fmt: object) -> str:
    msg = json.loads(m.start_message(SID, CALL))
    msg["start"]["mediaFormat"].update(fmt)
    return json.dumps(msg)


@pytest.mark.parametrize(
    ("messages", "error"),
    [
        (["{not json"], "invalid JSON"),
        (["[1, 2]"], "not a JSON object"),
        ([b"\x00\x01"], "binary"),
        ([json.dumps({"no": "event"})], "event"),
        ([m.media_message(SID, b"x", 1, 0)], "before 'start'"),
        ([m.start_message(SID, CALL), m.start_message(SID, CALL)], "second 'start'"),
        ([_start_with(encoding="audio/x-l16")], "unsupported encoding"),
        ([_start_with(sampleRate="8000")], "sampleRate"),
        ([_start_with(sampleRate=1)], "sample rate"),
        ([_start_with(sampleRate=47999)], r"unsupported sample rate 47999 \(supported: 8000, 16000\)"),
        ([_start_with(channels=2)], "mono"),
        ([m.start_message(SID, CALL), json.dumps({"event": "media", "streamSid": SID})], "media"),
        (
            [
                m.start_message(SID, CALL),
                json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "@@not base64@@"}}),
            ],
            "base64",
        ),
        ([m.start_message(SID, CALL), m.media_message("MZother", b"x", 1, 0)], "does not match"),
        ([m.start_message(SID, CALL), json.dumps({"event": "clear", "streamSid": SID})], "unknown event"),
        ([m.start_message(SID, "CA" + "x" * 200)], "longer than 128 characters"),
        ([m.start_message(SID, CALL), json.dumps({"event": "x" * 5000, "streamSid": SID})], r"event 'x+\.\.\.$"),
    ],
)
def test_protocol_errors(messages: list, error: str) -> None:
    p = m.Parser()
    with pytest.raises(m.MediaStreamError, match=error) as raised:
        for msg in messages:
            p.receive(msg)
    assert len(str(raised.value)) < 200  # what the peer sent is cut short: error texts go into JSON lines


def test_payload_round_trips_through_base64() -> None:
    p = _started()
    msg = json.loads(m.media_message(SID, b"\xff\x7f", 3, 40))
    assert base64.b64decode(msg["media"]["payload"]) == b"\xff\x7f"
    assert p.receive(json.dumps(msg)).payload == b"\xff\x7f"
