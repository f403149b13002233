"""L16 audio over WebSocket (mod_audio_fork, Jambonz listen, Vonage): the parser, and `serve --websocket-pcm`
over real sockets with recorded speech."""

from __future__ import annotations

import importlib.util
import json
import ssl
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from serve_support import (
    ServeProcess,
    assert_same_events,
    expected_lines,
    self_signed_certificate,
    websocket_pcm_call,
)

from anger_stream.serve import websocket_pcm as w


@pytest.mark.parametrize(
    ("meta", "want"),
    [
        ({"callSid": "j1", "sampleRate": 16000, "mixType": "stereo", "from": "+1555"}, ("j1", 16000, 2)),  # Jambonz
        ({"event": "websocket:connected", "content-type": "audio/l16;rate=16000", "uuid": "v1"}, ("v1", 16000, 1)),
        ({"callId": "fs1", "sampleRate": "8k", "mixType": "mixed"}, ("fs1", 8000, 1)),  # mod_audio_fork metadata
        ({"call_id": "x", "sampleRate": "8000", "channels": 2}, ("x", 8000, 2)),
    ],
)
def test_each_platforms_metadata(meta: dict, want: tuple) -> None:
    assert w.Parser().receive(json.dumps(meta)) == w.Metadata(*want)


@pytest.mark.parametrize(
    ("meta", "error"),
    [
        ({"sampleRate": 8000}, "names no call id"),
        ({"callSid": 7, "sampleRate": 8000}, "names no call id"),
        ({"callSid": "c"}, "names no sample rate"),
        ({"callSid": "c", "sampleRate": 44100}, "unsupported sample rate 44100"),
        ({"callSid": "c", "content-type": "audio/pcmu;rate=8000"}, "unsupported content-type"),
        ({"callSid": "c", "sampleRate": 8000, "mixType": "quad"}, "unknown mixType"),
        ({"callSid": "c", "sampleRate": 8000, "channels": 3}, "unsupported channels 3"),
        ({"callSid": "c" * 200, "sampleRate": 8000}, "longer than 128"),
    ],
)
def test_bad_metadata(meta: dict, error: str) -> None:
    with pytest.raises(w.WebSocketPcmError, match=error):
        w.Parser().receive(json.dumps(meta))


def test_audio_is_split_into_channels_across_messages() -> None:
    parser = w.Parser()
    with pytest.raises(w.WebSocketPcmError, match="audio before the metadata"):
        parser.receive(b"\0\0")
    parser.receive(w.metadata_message("c", 8000, "stereo"))
    frames = struct.pack("<6h", 1, -1, 2, -2, 3, -3)
    assert parser.receive(frames[:5]) == w.Audio((struct.pack("<h", 1), struct.pack("<h", -1)))
    assert parser.receive(frames[5:]) == w.Audio((struct.pack("<2h", 2, 3), struct.pack("<2h", -2, -3)))
    assert parser.receive('{"event":"websocket:dtmf","digit":"5","duration":260}') == w.Dtmf("5")
    assert parser.receive('{"event":"dtmf","dtmf":"#","duration":"100"}') == w.Dtmf("#")
    assert parser.receive('{"event":"websocket:notify","payload":{}}') == w.Notice("websocket:notify")
    for bad, error in (("[1]", "not a JSON object"), ("{}", "has no event"), ("nope", "invalid JSON")):
        with pytest.raises(w.WebSocketPcmError, match=error):
            parser.receive(bad)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> ServeProcess:
    cert, key = self_signed_certificate(tmp_path_factory.mktemp("tls"))
    metrics = ["--metrics", "127.0.0.1:0"] if importlib.util.find_spec("prometheus_client") else []
    srv = ServeProcess("--tls-cert", str(cert), "--tls-key", str(key), *metrics, protocols=("websocket-pcm",))
    srv.cert = cert
    yield srv
    assert srv.stop() == 0


def _client_tls(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


def test_a_mono_call_over_wss_equals_the_single_stream_detector(server: ServeProcess, speech: np.ndarray) -> None:
    port, tls = server.ports["websocket-pcm"], _client_tls(server.cert)
    vonage = json.dumps({"event": "websocket:connected", "content-type": "audio/l16;rate=8000", "uuid": "vonage-1"})
    websocket_pcm_call(port, speech, vonage, tls=tls, texts={3: '{"event":"websocket:dtmf","digit":"7"}'})
    events = server.call_events("vonage-1")
    start = next(e for e in server.events if e.get("call") == "vonage-1")
    assert start["protocol"] == "websocket-pcm" and start["sample_rate"] == 8000 and "channel" not in start
    assert [e["digit"] for e in events if e.get("state") == "dtmf"] == ["7"]
    assert events[-1]["state"] == "end" and events[-1]["t"] == pytest.approx(len(speech) / 8000, abs=1e-3)
    scored = [e for e in events if e["type"] != "status"]
    assert_same_events(scored, expected_lines(speech, 8000, "vonage-1"))


def test_a_stereo_call_scores_each_channel_as_its_own_stream(server: ServeProcess, two_channel_call: Path) -> None:
    """Recorded speech: the agent calm on channel 0, the customer angry on channel 1 (mod_audio_fork's and
    Jambonz's "stereo"), sent as 16 kHz L16 with its subprotocol."""
    stereo, rate = sf.read(str(two_channel_call), dtype="int16")
    port, tls = server.ports["websocket-pcm"], _client_tls(server.cert)
    websocket_pcm_call(port, stereo, w.metadata_message("CA-stereo", rate, "stereo"), frame=640, tls=tls,
                       subprotocols=["audio.jambonz.org"])  # fmt: skip
    server.call_events("CA-stereo")
    lines = [e for e in server.events if e.get("call") == "CA-stereo"]
    while sum(e.get("state") == "end" for e in lines) < 2:
        lines.append(server.next())
    assert {e["channel"] for e in lines} == {0, 1}
    for channel in (0, 1):
        got = [e for e in lines if e["channel"] == channel and e["type"] != "status"]
        want = expected_lines(stereo[:, channel], rate, "CA-stereo")
        assert_same_events([{k: v for k, v in e.items() if k != "channel"} for e in got], want)
    top = {c: max(e["p"] for e in lines if e["channel"] == c and e["type"] == "window" and e["p"] is not None)
           for c in (0, 1)}  # fmt: skip
    assert top[1] > top[0], "the customer's channel is the angrier"
    assert 0 not in {e["channel"] for e in lines if e["type"] == "anger_start"}, "the agent is never angry"


def test_protocol_errors_close_the_call(server: ServeProcess, speech: np.ndarray) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    port, tls = server.ports["websocket-pcm"], _client_tls(server.cert)
    with connect(f"wss://127.0.0.1:{port}/", ssl=tls) as ws:
        ws.send(b"\0\0" * 160)
        with pytest.raises(ConnectionClosed):
            ws.recv(10)
    assert ws.close_code == 1008
    with connect(f"wss://127.0.0.1:{port}/", ssl=tls) as ws:
        ws.send(json.dumps({"callSid": "bad-rate", "sampleRate": 44100}))
        with pytest.raises(ConnectionClosed):
            ws.recv(10)
    errors = [server.next(), server.next()]  # before the metadata names the call: named after the peer
    assert [e["error_kind"] for e in errors] == ["protocol", "protocol"]
    assert all(e["call"].startswith("websocket-pcm:127.0.0.1:") for e in errors)
    assert "audio before the metadata" in errors[0]["error"]
    assert "unsupported sample rate 44100" in errors[1]["error"]


def test_metrics_count_each_channel_under_its_protocol(server: ServeProcess, speech: np.ndarray) -> None:
    pytest.importorskip("prometheus_client")
    from test_serve_metrics import scrape, total

    port, tls = server.ports["websocket-pcm"], _client_tls(server.cert)
    before = scrape(server.ports["metrics"])
    stereo = np.stack([speech, speech // 2], axis=1)[:16000]
    websocket_pcm_call(port, stereo, w.metadata_message("CA-counted", 8000, "stereo"), tls=tls)
    server.call_events("CA-counted")
    lines = [e for e in server.events if e.get("call") == "CA-counted"]
    while sum(e.get("state") == "end" for e in lines) < 2:
        lines.append(server.next())
    deadline = time.monotonic() + 10  # the metrics sink counts a line just after it is written
    while total(after := scrape(server.ports["metrics"]), "anger_stream_calls_active", protocol="websocket-pcm"):
        assert time.monotonic() < deadline, "the calls' ends were not counted"
        time.sleep(0.05)
    calls = "anger_stream_calls_total"
    assert total(after, calls, protocol="websocket-pcm") - total(before, calls, protocol="websocket-pcm") == 2


def test_the_token_is_required_and_taken_from_the_url(speech: np.ndarray) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    token = "t0ken-for-the-websocket-pcm-test"
    server = ServeProcess(protocols=("websocket-pcm",), env={"ANGER_STREAM_TOKEN": token})
    try:
        port = server.ports["websocket-pcm"]
        with pytest.raises(InvalidStatus) as refused:
            connect(f"ws://127.0.0.1:{port}/fork?token=wrong-token-of-enough-length")
        assert refused.value.response.status_code == 403
        websocket_pcm_call(port, speech[:8000], w.metadata_message("CA-token"), path=f"/fork?token={token}")
        assert server.call_events("CA-token")[-1]["state"] == "end"
    finally:
        assert server.stop() == 0
    assert "refused websocket-pcm connection from 127.0.0.1" in "".join(server.stderr)
    assert token not in "".join(server.stderr)
