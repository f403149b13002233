"""`anger-stream serve` with security options, end to end: tokens, Twilio signatures, TLS (wss://), the
allow-list and the exposure warning, over real sockets with the CLI as a subprocess."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    CLI,
    ServeProcess,
    assert_same_events,
    audiosocket_call,
    expected_lines,
    mediastream_call,
    mulaw_roundtrip,
    self_signed_certificate,
)
from websockets.datastructures import Headers

from anger_stream.serve import mediastream
from anger_stream.serve.security import TOKEN_ENV, TWILIO_ENV

TOKEN = "shared-token-5f0c2a9e7b41d8c3"
AUTH_TOKEN = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def twilio_sign(url: str) -> str:
    """X-Twilio-Signature of a WebSocket upgrade as Twilio makes it: base64 HMAC-SHA1 of the URL."""
    return base64.b64encode(hmac.new(AUTH_TOKEN.encode(), url.encode(), hashlib.sha1).digest()).decode()


def refused_status(url: str, **kwargs: object) -> tuple[int, Headers]:
    """Try a WebSocket upgrade that must be refused: its HTTP status and headers."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    with pytest.raises(InvalidStatus) as refused:
        connect(url, open_timeout=10, **kwargs).close()
    return refused.value.response.status_code, refused.value.response.headers


def secrets_absent(srv: ServeProcess) -> None:
    out = "".join(srv.stderr) + "".join(json.dumps(e) for e in srv.events)
    assert TOKEN not in out and AUTH_TOKEN not in out


@pytest.fixture(scope="module")
def guarded() -> ServeProcess:
    """Both protocols on loopback; Media Streams needs the token or Twilio's signature (from the environment)."""
    srv = ServeProcess("--allow", "127.0.0.0/8", protocols=("audiosocket", "mediastream"),
                       env={TOKEN_ENV: TOKEN, TWILIO_ENV: AUTH_TOKEN})  # fmt: skip
    yield srv
    assert srv.stop() == 0


def test_token_or_twilio_signature_admits_a_call(guarded: ServeProcess, speech: np.ndarray) -> None:
    port = guarded.ports["mediastream"]
    clip = speech[:16000]
    for headers in (
        {"Authorization": f"Bearer {TOKEN}"},
        {"X-Twilio-Signature": twilio_sign(f"wss://127.0.0.1:{port}/media")},
    ):
        call = mediastream_call(port, clip, headers=headers)
        events = guarded.call_events(call)
        assert events[-1]["state"] == "end"
        assert_same_events(events[:-1], expected_lines(mulaw_roundtrip(clip), 8000, call))
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/media?token={TOKEN}") as ws:  # the token as a query parameter
        ws.ping().wait(5)
    call = audiosocket_call(guarded.ports["audiosocket"], clip)  # 127.0.0.1 is in the allow-list
    assert guarded.call_events(call)[-1]["state"] == "end"
    assert not any("WARNING" in line for line in guarded.stderr)  # loopback: nothing to warn about
    secrets_absent(guarded)


def test_refused_upgrades_get_401_or_403_and_one_line(guarded: ServeProcess) -> None:
    port = guarded.ports["mediastream"]
    url = f"ws://127.0.0.1:{port}/media"
    while not guarded.lines.empty():
        guarded.events.append(guarded.lines.get())
    before = len(guarded.stderr)
    attempts = [
        ({}, 401, "no token or X-Twilio-Signature"),
        ({"additional_headers": {"Authorization": f"Bearer {TOKEN[:-1]}"}}, 403, "wrong token"),
        ({"additional_headers": {"X-Twilio-Signature": twilio_sign(f"wss://127.0.0.1:{port}/other")}}, 403,
         f"X-Twilio-Signature does not match wss://127.0.0.1:{port}/media"),
    ]  # fmt: skip
    for kwargs, status, _ in attempts:
        got, headers = refused_status(url, **kwargs)
        assert got == status
        assert (headers.get("WWW-Authenticate") == "Bearer") == (status == 401)
    got, _ = refused_status(f"{url}?token={TOKEN}x")
    assert got == 403
    deadline = time.monotonic() + 5
    while len(guarded.stderr) < before + 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = guarded.stderr[before:]
    assert len(lines) == 4, lines
    for line, (_, _, reason) in zip(lines, attempts + [({}, 403, "wrong token")], strict=True):
        assert line.startswith("anger-stream serve: refused mediastream connection from 127.0.0.1:")
        assert line.rstrip().endswith(f": {reason}"), line
    with socket.create_connection(("127.0.0.1", port)) as s:  # health checks need no credential
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        s.settimeout(5)
        assert b"".join(iter(lambda: s.recv(4096), b"")).startswith(b"HTTP/1.1 200 OK")
    time.sleep(0.3)
    assert guarded.lines.empty()  # no line on stdout: no call started
    secrets_absent(guarded)


def sent_then_closed(port: int, client: ssl.SSLContext, samples: np.ndarray) -> str:
    """A whole Media Streams call over TLS written at once, then close_notify and FIN without waiting for
    anything; returns the call id."""
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    from tools.channels import mulaw_encode

    call, sid = f"CA{uuid.uuid4().hex}", f"MZ{uuid.uuid4().hex}"
    payload = mulaw_encode(samples.astype(np.float32) / 32768.0)
    ws = ClientProtocol(parse_uri(f"wss://127.0.0.1:{port}/media"))
    with client.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1") as s:
        request = ws.connect()
        request.headers["Authorization"] = f"Bearer {TOKEN}"
        ws.send_request(request)
        s.sendall(b"".join(ws.data_to_send()))
        while ws.state is State.CONNECTING:
            ws.receive_data(s.recv(4096))
        for message in (
            [mediastream.start_message(sid, call)]
            + [
                mediastream.media_message(sid, payload[i : i + 160], n + 1, i // 8)
                for n, i in enumerate(range(0, len(payload), 160))
            ]
            + [mediastream.stop_message(sid, call)]
        ):
            ws.send_text(message.encode())
        s.sendall(b"".join(ws.data_to_send()))
        with contextlib.suppress(ssl.SSLError):  # the server's answer may arrive first
            s.unwrap()
        s.shutdown(socket.SHUT_WR)
    return call


def test_wss_with_a_self_signed_certificate(speech: np.ndarray, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    srv = ServeProcess("--tls-cert", str(cert), "--tls-key", str(key), "--token", TOKEN,
                       protocols=("mediastream",), workers=2)  # fmt: skip
    try:
        port = srv.ports["mediastream"]
        client = ssl.create_default_context(cafile=cert)
        clip = speech[:20000]
        call = mediastream_call(port, clip, tls=client, headers={"Authorization": f"Bearer {TOKEN}"})
        events = srv.call_events(call)
        assert events[-1]["state"] == "end"
        assert_same_events(events[:-1], expected_lines(mulaw_roundtrip(clip), 8000, call))
        assert refused_status(f"wss://127.0.0.1:{port}/media", ssl=client)[0] == 401  # TLS alone is not enough
        hasty = sent_then_closed(port, client, clip)  # asyncio closes TLS connections at EOF: nothing is lost
        events = srv.call_events(hasty)
        assert events[-1]["state"] == "end"
        assert_same_events(events[:-1], expected_lines(mulaw_roundtrip(clip), 8000, hasty))
        with pytest.raises(ssl.SSLCertVerificationError):  # the client checks the server's certificate
            mediastream_call(port, clip, tls=ssl.create_default_context())
        with socket.create_connection(("127.0.0.1", port)) as s:  # plain ws:// to the TLS port: no call
            s.sendall(b"GET /media HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            s.settimeout(5)
            try:
                reply = s.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert not reply.startswith(b"HTTP")
    finally:
        assert srv.stop() == 0
    assert [e["state"] for e in srv.events if e.get("type") == "status" and e.get("call")] == ["start", "end"] * 2
    others = [line for line in srv.stderr if " listening on " not in line]  # failed handshakes leave no line
    assert len(others) == 1 and others[0].endswith(": no token\n"), others
    secrets_absent(srv)


def test_allow_list_closes_other_networks_at_once() -> None:
    # bound beyond loopback, but only TEST-NET-1 (which no one here has) may connect
    srv = ServeProcess("--allow", "192.0.2.0/24", protocols=("audiosocket", "mediastream"), host="0.0.0.0")
    try:
        for protocol in ("audiosocket", "mediastream"):
            with socket.create_connection(("127.0.0.1", srv.ports[protocol])) as s:
                s.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    assert s.recv(10) == b""
        time.sleep(0.3)
    finally:
        assert srv.stop() == 0
    refused = [line for line in srv.stderr if "refused" in line]
    assert [line.split(" connection from ")[0] for line in refused] == [
        "anger-stream serve: refused audiosocket", "anger-stream serve: refused mediastream"
    ]  # fmt: skip
    assert all(line.rstrip().endswith(": not in --allow") for line in refused)
    warnings = [line for line in srv.stderr if "WARNING" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "anger-stream serve: WARNING: mediastream on 0.0.0.0:0 is reachable beyond this host without authentication:"
    )
    assert not [e for e in srv.events if e.get("call")]  # no call started


def test_exposed_listeners_are_warned_about_loudly() -> None:
    # the warnings come before anything else, so a missing model stops the server before it binds
    args = ["--audiosocket", "0.0.0.0:0", "--mediastream", "0.0.0.0:0", "--model", "/nonexistent.onnx"]
    r = subprocess.run([CLI, "serve", *args], capture_output=True, text=True, timeout=60)
    lines = r.stderr.splitlines()
    assert r.returncode == 5 and len(lines) == 3, r.stderr
    assert lines[0].startswith("anger-stream serve: WARNING: audiosocket on 0.0.0.0:0 is reachable beyond this host "
                               "without an allow-list (AudioSocket has no authentication)")  # fmt: skip
    assert "WARNING: mediastream on 0.0.0.0:0 is reachable beyond this host without authentication or TLS" in lines[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audiosocket", "127.0.0.1:0", "--tls-cert", "cert.pem"], "apply to the WebSocket listeners only"),
        (["--mediastream", "127.0.0.1:0", "--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
        (["--mediastream", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem"], "TLS certificate file not found"),
        (["--mediastream", "127.0.0.1:0", "--token", "short"], "at least 16 characters"),
        (["--audiosocket", "127.0.0.1:0", "--allow", "10.1.2.3/8"], "expected a network such as 10.0.0.0/8"),
    ],
)
def test_security_usage_errors(args: list[str], message: str) -> None:
    r = subprocess.run([CLI, "serve", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert "short" not in r.stderr
