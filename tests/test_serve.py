"""`anger-stream serve` end to end: real sockets on 127.0.0.1, the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    CLI,
    ServeProcess,
    assert_same_events,
    audiosocket_call,
    expected_lines,
    free_port,
    mediastream_call,
    mulaw_roundtrip,
    port_in_use,
)

from anger_stream.serve import audiosocket, mediastream


@pytest.fixture(scope="module")
def server() -> ServeProcess:
    srv = ServeProcess(protocols=("audiosocket", "mediastream"))
    yield srv
    assert srv.stop() == 0


def test_audiosocket_call_equals_the_single_stream_detector(server: ServeProcess, speech: np.ndarray) -> None:
    call = audiosocket_call(server.ports["audiosocket"], speech)
    events = server.call_events(call)
    start = next(e for e in server.events if e.get("call") == call)
    assert start == {"call": call, "type": "status", "state": "start", "t": 0.0, "sample_rate": 8000,
                     "protocol": "audiosocket", "peer": start["peer"]}  # fmt: skip
    assert events[-1]["state"] == "end"
    assert events[-1]["windows"] == sum(e["type"] == "window" for e in events)
    assert events[-1]["t"] == pytest.approx(len(speech) / 8000, abs=1e-3)
    assert_same_events(events[:-1], expected_lines(speech, 8000, call))


def test_mediastream_call_equals_the_single_stream_detector(server: ServeProcess, speech: np.ndarray) -> None:
    call = mediastream_call(server.ports["mediastream"], speech)
    events = server.call_events(call)
    assert events[-1]["state"] == "end"
    assert_same_events(events[:-1], expected_lines(mulaw_roundtrip(speech), 8000, call))


def test_concurrent_calls_on_both_protocols_are_independent(server: ServeProcess, speech: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    clips = [(speech * rng.uniform(0.05, 1.0)).astype(np.int16)[: rng.integers(9000, len(speech))] for _ in range(8)]
    check_mixed_calls(server, clips, frames=[int(rng.integers(1, 400)) for _ in clips])


def check_mixed_calls(srv: ServeProcess, clips: list[np.ndarray], frames: list[int] | None = None) -> None:
    """Odd clips as AudioSocket calls, even ones as Media Streams calls, 8 at once; each call's events must
    equal the single-stream detector's."""
    frames = frames or [160] * len(clips)
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(audiosocket_call if i % 2 else mediastream_call,
                        srv.ports["audiosocket" if i % 2 else "mediastream"], clip, frame=frame)
            for i, (clip, frame) in enumerate(zip(clips, frames, strict=True))
        ]  # fmt: skip
        calls = [f.result() for f in futures]
    for i, (call, clip) in enumerate(zip(calls, clips, strict=True)):
        audio = clip if i % 2 else mulaw_roundtrip(clip)
        assert_same_events(srv.call_events(call)[:-1], expected_lines(audio, 8000, call))


def test_websocket_fragments_pings_and_invalid_utf8(server: ServeProcess, speech: np.ndarray) -> None:
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.sync.client import connect
    from websockets.uri import parse_uri

    from tools.channels import mulaw_encode

    call, sid, port = f"CA{uuid.uuid4().hex}", f"MZ{uuid.uuid4().hex}", server.ports["mediastream"]
    payload = mulaw_encode(speech.astype(np.float32) / 32768.0)
    messages = [mediastream.start_message(sid, call)] + [
        mediastream.media_message(sid, payload[i : i + 160], n + 1, i // 8)
        for n, i in enumerate(range(0, len(payload), 160))
    ]
    with connect(f"ws://127.0.0.1:{port}/media") as ws:
        for msg in messages:
            ws.send([msg[:7], msg[7:50], msg[50:]])  # one message in three frames
        assert ws.ping().wait(5)  # the WebSocket layer answers pings
        ws.send(mediastream.stop_message(sid, call))
    events = server.call_events(call)
    assert events[-1]["state"] == "end"
    assert_same_events(events[:-1], expected_lines(mulaw_roundtrip(speech), 8000, call))

    bad = f"CA{uuid.uuid4().hex}"
    ws = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/media"))
    with socket.create_connection(("127.0.0.1", port)) as s:
        ws.send_request(ws.connect())
        s.sendall(b"".join(ws.data_to_send()))
        while ws.state is State.CONNECTING:
            ws.receive_data(s.recv(4096))
        ws.send_text(mediastream.start_message(sid, bad).encode())
        ws.send_text(b"\xff\xfe not UTF-8")
        s.sendall(b"".join(ws.data_to_send()))
        s.settimeout(10)
        while s.recv(4096):  # the server closes the call and the connection
            pass
    assert server.call_events(bad)[-1]["error"] == "protocol error: text message is not valid UTF-8"


def test_16khz_audiosocket_and_dtmf(server: ServeProcess, speech: np.ndarray) -> None:
    call = str(uuid.uuid4())
    wide = np.repeat(speech, 2)
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as s:
        s.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(wide[:320], 16000))
        s.sendall(audiosocket.dtmf_frame("#"))
        for i in range(320, len(wide), 320):
            s.sendall(audiosocket.audio_frame(wide[i : i + 320], 16000))
    events = server.call_events(call)
    assert events[0] == {"call": call, "type": "status", "state": "dtmf", "t": 0.02, "digit": "#"}
    assert_same_events(events[1:-1], expected_lines(wide, 16000, call))


def test_a_call_id_in_use_is_refused(server: ServeProcess, speech: np.ndarray) -> None:
    call = str(uuid.uuid4())
    first = socket.create_connection(("127.0.0.1", server.ports["audiosocket"]))
    first.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(speech[:800]))
    time.sleep(0.3)
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as second:
        second.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(speech[:800]))
        second.settimeout(5)
        assert second.recv(10) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as third:  # no audio: refused too
        third.sendall(audiosocket.uuid_frame(call) + audiosocket.dtmf_frame("5") + audiosocket.hangup_frame())
        third.settimeout(5)
        assert third.recv(10) == b""
    rest = [audiosocket.audio_frame(speech[i : i + 160]) for i in range(800, len(speech), 160)]
    first.sendall(b"".join(rest) + audiosocket.hangup_frame())
    first.close()
    events = server.call_events(call)
    assert events[-1]["state"] == "end"
    assert_same_events(events[:-1], expected_lines(speech, 8000, call))
    refused = [e for e in server.events if e.get("call", "").startswith(f"{call}@")]
    assert len(refused) == 2 and all(e["state"] == "error" and "already being served" in e["error"] for e in refused)
    assert [e["state"] for e in events if e["type"] == "status"] == ["end"]  # nothing of theirs in the call


def test_health_checks_and_probes_are_quiet(server: ServeProcess) -> None:
    from websockets.frames import Frame, Opcode

    before = len(server.stderr)
    frame = Frame(Opcode.TEXT, mediastream.connected_message().encode()).serialize(mask=True, extensions=[])
    request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.ports["mediastream"])) as s:
        s.sendall(request + frame)  # a WebSocket frame pipelined after a plain GET
        s.settimeout(5)
        reply = b"".join(iter(lambda: s.recv(4096), b""))
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith(b"OK\n")
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset
    time.sleep(0.3)
    assert server.stderr[before:] == []


def test_events_only_and_marks(speech: np.ndarray) -> None:
    from websockets.sync.client import connect

    srv = ServeProcess("--events-only", "--marks", "--threshold", "0", protocols=("mediastream",))
    try:
        sid, call = "MZmarks", "CAmarks"
        with connect(f"ws://127.0.0.1:{srv.ports['mediastream']}") as ws:
            ws.send(mediastream.start_message(sid, call))
            payload = mulaw_roundtrip(speech)
            from tools.channels import mulaw_encode

            data = mulaw_encode(payload)
            for n, i in enumerate(range(0, len(data), 160)):
                ws.send(mediastream.media_message(sid, data[i : i + 160], n + 1, i // 8))
            mark = json.loads(ws.recv(timeout=10))
            ws.send(mediastream.stop_message(sid, call))
        events = srv.call_events(call)
    finally:
        assert srv.stop() == 0
    assert mark["event"] == "mark" and mark["streamSid"] == sid and mark["mark"]["name"].startswith("anger_start:")
    assert [e["type"] for e in events] == ["anger_start", "anger_end", "status"]
    assert events[-1]["anger_segments"] == 1 and events[-1]["windows"] > 0


def test_sigterm_ends_open_calls_as_interrupted(speech: np.ndarray) -> None:
    srv = ServeProcess()
    call = str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", srv.ports["audiosocket"])) as s:
        s.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(speech[:12000]))
        time.sleep(0.5)
        assert srv.stop() == 0
    events = srv.call_events(call, timeout=1)
    assert events[-1]["state"] == "interrupted" and events[-1]["t"] == 1.5
    assert_same_events(events[:-1], expected_lines(speech[:12000], 8000, call))
    assert "Traceback" not in "".join(srv.stderr)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ([], 2, "--audiosocket HOST:PORT"),
        (["--audiosocket", "localhost:http"], 2, "expected HOST:PORT"),
        (["--audiosocket", "127.0.0.1:0", "--model", "/nonexistent.onnx"], 5, "model file not found"),
        (["--audiosocket", "192.0.2.1:9092"], 3, "cannot listen on 192.0.2.1:9092"),
    ],
)
def test_usage_errors(args: list[str], code: int, message: str) -> None:
    r = subprocess.run([CLI, "serve", *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == code, r.stderr
    assert message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr


def test_options_from_the_environment(speech: np.ndarray, tmp_path: Path) -> None:
    settings = tmp_path / "settings.json"
    settings.write_text('{"threshold": 0}')
    env = {"ANGER_STREAM_SERVE_CONFIG": str(settings), "ANGER_STREAM_SERVE_EVENTS_ONLY": "true"}
    srv = ServeProcess(env=env)
    try:
        events = srv.call_events(audiosocket_call(srv.ports["audiosocket"], speech))
    finally:
        assert srv.stop() == 0
    assert [e["type"] for e in events] == ["anger_start", "anger_end", "status"]  # threshold 0, no window lines
    bad = subprocess.run([CLI, "serve"], env={**os.environ, "ANGER_STREAM_SERVE_WORKERS": "two"}, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "'--workers'" in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.stderr


def test_port_in_use_exits_3() -> None:
    with port_in_use() as port:
        r = subprocess.run([CLI, "serve", "--audiosocket", f"127.0.0.1:{port}"], capture_output=True, text=True)
    assert r.returncode == 3 and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_serve() -> None:
    r = subprocess.run([CLI, "--help"], capture_output=True, text=True, timeout=60)
    assert "serve" in r.stdout and Path(CLI).exists()


def test_loadtest_reads_the_servers_lines_while_its_ticks_are_late(
    speech: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client behind its 20 ms ticks still yields on each, so the server's lines are read meanwhile (else
    the server blocks writing them and the load test measures its own stall)."""
    import types

    import soundfile as sf

    from tools import loadtest

    sf.write(tmp_path / "call.wav", speech, 8000)
    test = loadtest.LoadTest(loadtest.parse(["--file", str(tmp_path / "call.wav"), "--calls", "1", "--duration", "1"]))
    clock = iter(range(10**6))
    monkeypatch.setattr(loadtest, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))  # 1 s a read
    monkeypatch.setattr(test, "send_frame", lambda call, k: None)
    turns_while_streaming = []

    async def reader(task: asyncio.Task) -> None:
        while not task.done():
            turns_while_streaming.append(True)
            await asyncio.sleep(0)

    async def both() -> None:
        task = asyncio.ensure_future(test.stream())
        await asyncio.gather(task, reader(task))

    asyncio.run(both())
    assert test.late_ticks == test.n_frames and len(turns_while_streaming) > test.n_frames // 2


@pytest.mark.parametrize("protocol", ["audiosocket", "mediastream"])
def test_loadtest_tool(protocol: str, speech: np.ndarray, tmp_path: Path) -> None:
    import soundfile as sf

    sf.write(tmp_path / "call.wav", speech, 8000)
    repo = Path(__file__).resolve().parents[1]
    cmd = ["-m", "tools.loadtest", "--protocol", protocol, "--calls", "3", "--duration", "2.5", "--ramp", "0.2"]
    hostile = ["--flood", "1", "--dtmf", "5000"] if protocol == "audiosocket" else ["--ping-flood", "1"]
    hostile += ["--slowloris", "1", "--read-timeout", "1"]
    r = subprocess.run(
        [str(Path(CLI).parent / "python"), *cmd, *hostile, "--file", str(tmp_path / "call.wav")],
        cwd=repo, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["calls_completed"] == 3 and result["concurrent_calls"] == 3 and result["frames_dropped"] == 0
    assert result["windows_received"] == result["windows_expected"] == 3 * 3
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p99"]
    assert result["slowloris"]["closed"] == 1 and result["sigterm_s"] > 0 and result["server_rss_mb"]["max"] > 0
    if protocol == "audiosocket":
        assert result["flood"]["mb_sent"] < 100 and 0 < result["dtmf"]["lines_out"] < 100
    else:
        assert result["ping_flood"]["closed"] == 1
    bad = subprocess.run(
        [str(Path(CLI).parent / "python"), *cmd, "--file", "x.wav", "--target", "192.0.2.1:9092"],
        cwd=repo, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "loopback" in bad.stderr


def test_stdout_closed_stops_the_server_quietly(speech: np.ndarray) -> None:
    proc = subprocess.Popen(
        [CLI, "serve", "--audiosocket", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    port = json.loads(proc.stdout.readline())["port"]
    proc.stdout.close()  # like `anger-stream serve ... | head -n 1`
    audiosocket_call(port, speech[:16000])
    assert proc.wait(20) == 0
    assert b"Traceback" not in proc.stderr.read()


def test_workers_share_the_ports_and_each_call_stays_whole(speech: np.ndarray) -> None:
    srv = ServeProcess(protocols=("audiosocket", "mediastream"), workers=2)
    assert sorted((e["protocol"], e["worker"]) for e in srv.listening) == [
        ("audiosocket", 0), ("audiosocket", 1), ("mediastream", 0), ("mediastream", 1)
    ]  # fmt: skip
    check_mixed_calls(srv, [speech[: 9000 + 1500 * i] for i in range(16)])
    starts = [e for e in srv.events if e.get("state") == "start"]
    assert len(starts) == 16 and {e["worker"] for e in starts} == {0, 1}  # the kernel spread the calls
    assert srv.stop() == 0
    assert "Traceback" not in "".join(srv.stderr)


def test_workers_stop_together(speech: np.ndarray) -> None:
    srv = ServeProcess(workers=2)
    call = str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", srv.ports["audiosocket"])) as s:
        s.sendall(audiosocket.uuid_frame(call) + audiosocket.audio_frame(speech[:12000]))
        time.sleep(0.5)
        assert srv.stop() == 0  # SIGTERM to the parent reaches the worker holding the call
    assert srv.call_events(call, timeout=1)[-1]["state"] == "interrupted"
    crashing = ServeProcess(workers=2)
    worker = int(subprocess.check_output(["pgrep", "-P", str(crashing.proc.pid)], text=True).split()[0])
    subprocess.run(["kill", "-KILL", str(worker)], check=True)
    assert crashing.proc.wait(15) == 1
    assert "exited with code -9; stopping" in "".join(crashing.stderr)


def test_workers_stop_when_the_parent_dies() -> None:
    srv = ServeProcess(workers=2)
    workers = subprocess.check_output(["pgrep", "-P", str(srv.proc.pid)], text=True).split()
    srv.proc.kill()
    srv.proc.wait(5)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers), "workers outlived their parent"


def test_workers_refuse_a_port_in_use_by_workers() -> None:
    first = ServeProcess(workers=2)
    port = first.ports["audiosocket"]
    try:
        for args in (["--audiosocket", f"127.0.0.1:{port}"], ["--mediastream", f"127.0.0.1:{port}"]):
            r = subprocess.run([CLI, "serve", *args, "--workers", "2"], capture_output=True, text=True, timeout=60)
            assert r.returncode == 3 and "cannot listen" in r.stderr, r.stderr
        same = f"127.0.0.1:{free_port()}"  # one free port for both protocols
        both = ["--audiosocket", same, "--mediastream", same]
        r = subprocess.run([CLI, "serve", *both, "--workers", "2"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 3 and "cannot listen" in r.stderr, r.stderr
    finally:
        assert first.stop() == 0


def test_workers_report_listen_and_model_errors_once() -> None:
    with port_in_use() as port:
        r = subprocess.run([CLI, "serve", "--audiosocket", f"127.0.0.1:{port}", "--workers", "2"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 3 and r.stderr.count("cannot listen") == 1 and "Traceback" not in r.stderr
    r = subprocess.run([CLI, "serve", "--audiosocket", "127.0.0.1:0", "--workers", "2", "--model", "/no.onnx"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 5 and r.stderr.count("model file not found") == 1


def test_a_hangup_ends_the_call_while_the_caller_keeps_the_socket_open(
    server: ServeProcess, speech: np.ndarray
) -> None:
    """Reads wait for two frames' bytes (batched); the last frame and the hangup, fewer, are read all the same."""
    call = str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", server.ports["audiosocket"])) as s:
        s.sendall(audiosocket.uuid_frame(call))
        t0 = time.monotonic()
        for n, i in enumerate(range(0, 16_000, 160)):  # 2 s in real time
            time.sleep(max(t0 + n * 0.02 - time.monotonic(), 0))
            s.sendall(audiosocket.audio_frame(speech[i : i + 160]))
        s.sendall(audiosocket.hangup_frame())
        sent = time.monotonic()
        events = server.call_events(call, timeout=5)
        assert time.monotonic() - sent < 1.0  # not the read timeout's 10 s
    assert events[-1]["state"] == "end" and events[-1]["windows"] == len(expected_lines(speech[:16_000], 8000, call))
