"""Peers that attack the server with what it reads and repeats: long or forged strings, parser edge cases,
floods of messages that are not audio, and a stderr nobody reads. Real sockets, real server processes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from serve_support import CLI, ServeProcess, assert_same_events, expected_lines, paced_audiosocket_call

from anger_stream.serve import audiosocket as a
from anger_stream.serve import mediastream as m

MEDIA = m.media_message("MZh", bytes(160), 1, 0)


@pytest.fixture(scope="module")
def server() -> ServeProcess:
    srv = ServeProcess("--read-timeout", "1", protocols=("audiosocket", "mediastream"))
    yield srv
    assert srv.stop() == 0


def _ws_until_closed(port: int, messages: list[str | bytes], then: str = "", seconds: float = 15.0) -> float:
    """Send messages, then (`then`) flood pongs, marks or DTMF until the server closes the connection; the
    seconds that took."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    started = time.monotonic()
    with connect(f"ws://127.0.0.1:{port}/media", max_size=None, close_timeout=1) as ws:
        try:
            for msg in messages:
                ws.send(msg)
        except ConnectionClosed:  # the server closed the call before the last messages: what some cases expect
            return time.monotonic() - started
        flood = {
            "pong": lambda: ws.pong(b"x"),
            "mark": lambda: ws.send(json.dumps({"event": "mark", "streamSid": "MZh", "mark": {"name": "m"}})),
            "dtmf": lambda: ws.send(m.dtmf_message("MZh", "5")),
            "": lambda: time.sleep(0.05),
        }[then]
        try:
            while time.monotonic() - started < seconds:
                flood()
            ws.recv(timeout=seconds)
        except (ConnectionClosed, OSError, TimeoutError):
            pass
    return time.monotonic() - started


def _final(srv: ServeProcess, call: str) -> dict:
    return srv.call_events(call, timeout=20)[-1]


@pytest.mark.parametrize("then", ["pong", "mark", "dtmf"])
def test_a_flood_of_messages_that_are_not_audio_is_closed(server: ServeProcess, then: str) -> None:
    call = f"CA{uuid.uuid4().hex}"
    took = _ws_until_closed(server.ports["mediastream"], [m.start_message("MZh", call), MEDIA], then)
    final = _final(server, call)
    kind = {"pong": "pongs", "mark": "marks", "dtmf": "DTMF digits"}[then]
    assert final["error_kind"] == "flood" and f"{kind} a second" in final["error"], final
    assert took < 10


def test_empty_audio_frames_are_not_progress(server: ServeProcess) -> None:
    call = str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as s:
        s.sendall(a.uuid_frame(call) + a.audio_frame(np.zeros(160, dtype=np.int16)))
        s.settimeout(0.2)
        started = time.monotonic()
        try:
            while time.monotonic() - started < 10:
                s.sendall(a.frame(a.AUDIO))  # 20 a second: within their rate
                time.sleep(0.05)
        except OSError:
            pass
    final = _final(server, call)
    assert final["error_kind"] == "timeout" and "no audio frame for 1 s" in final["error"], final
    assert time.monotonic() - started < 5


def test_an_audiosocket_flood_of_empty_frames_is_closed(server: ServeProcess) -> None:
    call = str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as s:
        s.sendall(a.uuid_frame(call) + a.audio_frame(np.zeros(160, dtype=np.int16)))
        with contextlib.suppress(OSError):
            s.sendall(a.frame(a.AUDIO) * 100_000)
    final = _final(server, call)
    assert final["error_kind"] == "flood" and "short audio frames a second" in final["error"], final


@pytest.mark.parametrize(
    ("name", "message", "error"),
    [
        ("Infinity", '{"event":"media","streamSid":"MZh","media":{"payload":"","chunk":Infinity}}', "Infinity"),
        ("a huge number", '{"event":"media","streamSid":"MZh","media":{"payload":"AAAA","chunk":1e999}}', None),
        ("deep nesting", "[" * 32_000 + "]" * 32_000, "nested too deep"),
        ("a long digit", m.dtmf_message("MZh", "7" * 60_000), "is not one printable ASCII character"),
        ("a second connected", m.connected_message(), "a second 'connected'"),
    ],
)
def test_parser_edge_cases_are_protocol_errors(server: ServeProcess, name: str, message: str, error: str) -> None:
    call = f"CA{uuid.uuid4().hex}"
    port = server.ports["mediastream"]
    _ws_until_closed(port, [m.connected_message(), m.start_message("MZh", call), MEDIA, message], seconds=3)
    final = _final(server, call)
    if error is None:  # a number too large for a chunk index is no index: the call goes on until it stalls
        assert final["error_kind"] == "timeout", final
    else:
        assert final["error_kind"] == "protocol" and error in final["error"], (name, final)
        assert len(json.dumps(final)) < 400
    assert "internal error" not in "".join(server.stderr) and "Traceback" not in "".join(server.stderr)


def test_peer_strings_cannot_forge_log_lines(server: ServeProcess) -> None:
    call = "CA\nanger-stream serve: forged line\x1b[31m\u2028"
    _ws_until_closed(server.ports["mediastream"], [m.start_message("MZ\r\x1b[2J", call), "{oops"], seconds=3)
    final = _final(server, call)
    assert final["error_kind"] == "protocol"
    stderr = "".join(server.stderr)
    assert "\x1b" not in stderr and "\u2028" not in stderr and "\r" not in stderr
    assert "\nanger-stream serve: forged line" not in stderr
    assert "call CA\\x0aanger-stream serve: forged line\\x1b[31m\\u2028: protocol error" in stderr


def test_a_refused_upgrade_with_a_long_path_is_one_short_line() -> None:
    srv = ServeProcess(protocols=("mediastream",), env={"ANGER_STREAM_TWILIO_AUTH_TOKEN": "x" * 32})
    try:
        path = "/media/" + "p" * 6000
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            "X-Twilio-Signature: bm90IGEgc2lnbmF0dXJl\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", srv.ports["mediastream"])) as s:
            s.sendall(request.encode())
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 403")
    finally:
        assert srv.stop() == 0
    refused = [line for line in srv.stderr if "refused mediastream connection" in line]
    assert len(refused) == 1 and len(refused[0]) < 1000 and "X-Twilio-Signature does not match" in refused[0]


def test_long_digits_with_workers_and_a_slow_reader_give_whole_lines() -> None:
    proc = subprocess.Popen(
        [CLI, "serve", "--mediastream", "127.0.0.1:0", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        lines = []
        while len([x for x in lines if x.get("state") == "listening"]) < 2:
            lines.append(json.loads(proc.stdout.readline()))
        port = lines[0]["port"]
        calls = [f"CA{uuid.uuid4().hex}" for _ in range(30)]
        digit = m.dtmf_message("MZh", "7" * 60_000)

        def caller(call: str) -> None:
            _ws_until_closed(port, [m.start_message("MZh", call), MEDIA, digit, MEDIA, digit], seconds=3)

        threads = [threading.Thread(target=caller, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(1)  # nobody read stdout meanwhile
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    got = [json.loads(line) for line in out.splitlines()]  # a torn line fails here
    finals = {e["call"]: e for e in got if e.get("call") in calls and e.get("state") == "error"}
    assert set(finals) == set(calls)
    assert all(e["error_kind"] == "protocol" for e in finals.values())
    assert max(map(len, out.splitlines())) < 1000


def test_lines_of_workers_stay_whole_whatever_their_length(tmp_path: Path) -> None:
    """Two forked processes write 100 KB lines to one pipe under the workers' line lock; none is torn."""
    script = (
        "import os, sys\n"
        "from anger_stream.serve.workers import LineLock\n"
        "from anger_stream.stdio import emit_line\n"
        "lock = LineLock()\n"
        "for k in 'ab':\n"
        "    if os.fork() == 0:\n"
        "        for _ in range(20):\n"
        "            emit_line(k * 100_000, lock=lock)\n"
        "        os._exit(0)\n"
        "os.wait(); os.wait()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    chunks = []
    while select.select([proc.stdout], [], [], 20)[0]:
        chunk = os.read(proc.stdout.fileno(), 1000)  # a slow reader: partial writes
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(20) == 0
    lines = b"".join(chunks).splitlines()
    assert len(lines) == 40 and all(line in (b"a" * 100_000, b"b" * 100_000) for line in lines)


def test_a_stderr_nobody_reads_stalls_no_call(speech: np.ndarray) -> None:
    """1,000 connections that each cause an error line, with stderr a pipe nobody reads, then a real-time call:
    every window comes, and SIGTERM ends the server at once."""
    proc = subprocess.Popen(
        [CLI, "serve", "--audiosocket", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        port = json.loads(proc.stdout.readline())["port"]
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        for _ in range(1000):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(a.frame(0x42, b"x" * 200))
        good = str(uuid.uuid4())
        paced_audiosocket_call(port, speech, good)
        deadline = time.monotonic() + 20
        while not any(good in x and '"end"' in x for x in lines) and time.monotonic() < deadline:
            time.sleep(0.1)
        started = time.monotonic()
        proc.terminate()
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 3
    finally:
        proc.kill()
    events = [json.loads(x) for x in lines]
    assert sum(e.get("error_kind") == "protocol" for e in events) == 1000
    got = [e for e in events if e.get("call") == good and e.get("state") not in ("start", "end")]
    assert_same_events(got, expected_lines(speech, 8000, good))


def test_log_lines_never_block_the_logger() -> None:
    """With stderr a pipe nobody reads, 10,000 log lines (no peer, so no per-peer limit) take no time; the
    process ends within the drain time."""
    script = (
        "import time\n"
        "from anger_stream.serve.log import log, writing\n"
        "started = time.monotonic()\n"
        "with writing():\n"
        "    for i in range(10_000):\n"
        "        log(f'line {i} ' + 'x' * 100)\n"
        "    print(round(time.monotonic() - started, 3), flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        took = float(proc.stdout.readline())
        assert took < 1.0
        assert proc.wait(5) == 0
    finally:
        proc.kill()
    err = proc.stderr.read()
    assert "log lines dropped (stderr is not read fast enough)" in err


def test_read_timeout_must_be_finite() -> None:
    done = subprocess.run(
        [CLI, "serve", "--audiosocket", "0", "--read-timeout", "inf"], capture_output=True, text=True, timeout=60
    )  # a server that accepted it would run until the timeout
    assert done.returncode == 2 and "--read-timeout" in done.stderr and "Traceback" not in done.stderr


def test_a_deeply_nested_config_file_is_one_error_line(tmp_path: Path) -> None:
    config = tmp_path / "deep.json"
    config.write_text("[" * 100_000 + "]" * 100_000)
    done = subprocess.run(
        [CLI, "serve", "--audiosocket", "0", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "nested too deep" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("message", "error"),
    [
        ("[" * 32_000 + "]" * 32_000, "nested too deep"),
        ('{"event":"x","n":NaN}', "NaN"),
        ('{"callSid":"CAx","sampleRate":"\u00b2k"}', "unsupported sample rate"),
    ],
)
def test_websocket_pcm_parser_edge_cases_are_protocol_errors(message: str, error: str) -> None:
    from anger_stream.serve import websocket_pcm as w

    srv = ServeProcess(protocols=("websocket-pcm",))
    try:
        call = f"CA{uuid.uuid4().hex}"
        first = [] if message.startswith('{"callSid"') else [w.metadata_message(call)]
        _ws_until_closed(srv.ports["websocket-pcm"], [*first, message], seconds=3)
        if first:
            final = _final(srv, call)
        else:
            final = next(e for e in (srv.next() for _ in range(5)) if e.get("state") == "error")
        assert final["error_kind"] == "protocol" and error in final["error"], final
    finally:
        assert srv.stop() == 0
    assert "internal error" not in "".join(srv.stderr) and "Traceback" not in "".join(srv.stderr)
