"""Calls that send garbage or stall are reported and closed; every other call keeps being served, and the
server's file descriptors and memory return to their baseline."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    ServeProcess,
    assert_same_events,
    audiosocket_call,
    expected_lines,
    mediastream_call,
    paced_audiosocket_call,
    rss_kb,
)

from anger_stream.serve import audiosocket as a
from anger_stream.serve import mediastream as m


@pytest.fixture(scope="module")
def server() -> ServeProcess:
    srv = ServeProcess("--read-timeout", "1", protocols=("audiosocket", "mediastream"))
    yield srv
    assert srv.stop() == 0


def _tcp(port: int, data: bytes, then: str = "close") -> None:
    """Send bytes; then close, stall until the server hangs up, or reset the connection."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(data)
        if then == "stall":
            s.settimeout(10)
            assert s.recv(1) == b""
        elif then == "reset":  # once the server has read the data (a reset discards unread data)
            time.sleep(0.3)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _ws(port: int, messages: list, then: str = "close") -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws:
        for msg in messages:
            ws.send(msg)
        if then == "stall":
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        elif then == "drop":
            time.sleep(0.3)
            ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            ws.socket.close()


def _uuid() -> str:
    return str(uuid.uuid4())


AUDIO = a.audio_frame(np.zeros(160, dtype=np.int16))
MEDIA = m.media_message("MZf", bytes(160), 1, 0)
# (name, protocol, call id or None for the connection's address, sender, expected error text)
FAULTS: list[tuple[str, str, Callable[[str], tuple[list | bytes, str]], str]] = [
    ("unknown kind", "audiosocket", lambda c: (a.uuid_frame(c) + AUDIO + a.frame(0x42, b"??"), "close"), "0x42"),
    ("long length, stall", "audiosocket", lambda c: (a.uuid_frame(c) + AUDIO + b"\x10\x10\x00" + bytes(99), "stall"),
     "no audio frame for 1 s"),
    ("half a header, stall", "audiosocket", lambda c: (a.uuid_frame(c) + AUDIO + b"\x10", "stall"), "no audio frame"),
    ("closed inside a frame", "audiosocket", lambda c: (a.uuid_frame(c) + AUDIO + b"\x10\x01\x40abc", "close"),
     "inside a frame"),
    ("reset inside a frame", "audiosocket", lambda c: (a.uuid_frame(c) + AUDIO + b"\x10\x01", "reset"), ""),
    ("audio before the UUID", "audiosocket", lambda c: (AUDIO, "close"), "UUID frame first"),
    ("invalid JSON", "mediastream", lambda c: ([m.start_message("MZf", c), MEDIA, "{oops"], "close"), "invalid JSON"),
    ("invalid base64", "mediastream", lambda c: ([m.start_message("MZf", c), MEDIA, json.dumps(
        {"event": "media", "streamSid": "MZf", "media": {"payload": "not base64!"}})], "close"), "base64"),
    ("binary message", "mediastream", lambda c: ([m.start_message("MZf", c), b"\x00\x01"], "close"), "binary"),
    ("start, stall", "mediastream", lambda c: ([m.start_message("MZf", c), MEDIA], "stall"),
     "no media message for 1 s"),
    ("huge message", "mediastream", lambda c: ([m.start_message("MZf", c), json.dumps(
        {"event": "media", "media": {"payload": base64.b64encode(bytes(90000)).decode()}})], "close"),
     "connection lost"),
    ("dropped connection", "mediastream", lambda c: ([m.start_message("MZf", c), MEDIA], "drop"), "connection lost"),
]  # fmt: skip


def test_faulty_calls_are_closed_and_others_keep_being_served(server: ServeProcess, speech: np.ndarray) -> None:
    good = _uuid()
    caller = threading.Thread(target=paced_audiosocket_call, args=(server.ports["audiosocket"], speech, good))
    caller.start()
    ids = []
    with ThreadPoolExecutor(len(FAULTS)) as pool:
        for _, protocol, make, _ in FAULTS:
            call = _uuid() if protocol == "audiosocket" else f"CA{uuid.uuid4().hex}"
            data, then = make(call)
            send = _tcp if protocol == "audiosocket" else _ws
            ids.append(call)
            pool.submit(send, server.ports[protocol], data, then)
    caller.join()
    assert_same_events(server.call_events(good)[:-1], expected_lines(speech, 8000, good))
    stderr = "".join(server.stderr)
    for (name, _, _, error), call in zip(FAULTS, ids, strict=True):
        if name == "audio before the UUID":
            final = [e for e in server.events if e.get("call", "").startswith("audiosocket:") and error in e["error"]]
            assert len(final) == 1, name
            assert f"call {final[0]['call']}: protocol error: expected the UUID frame first" in stderr
            continue
        events = server.call_events(call, timeout=10)
        assert events[-1]["state"] == "error" and error in events[-1]["error"], (name, events[-1])
        assert f"call {call}: " in stderr, name
    assert "Traceback" not in stderr
    assert server.proc.poll() is None


def test_a_port_probe_is_not_an_error(server: ServeProcess) -> None:
    before = len(server.stderr)
    socket.create_connection(("127.0.0.1", server.ports["audiosocket"])).close()
    time.sleep(0.3)
    assert len(server.stderr) == before


def _fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _round(server: ServeProcess, speech: np.ndarray, n: int) -> None:
    """n calls at once: good ones on both protocols and every fault, until all have been reported."""
    calls = []
    with ThreadPoolExecutor(12) as pool:
        for i in range(n):
            _, protocol, make, _ = FAULTS[i % len(FAULTS)]
            if i % 3 == 0:
                fn = audiosocket_call if i % 2 else mediastream_call
                calls.append(pool.submit(fn, server.ports["audiosocket" if i % 2 else "mediastream"], speech[:16000]))
            else:
                call = _uuid() if protocol == "audiosocket" else f"CA{uuid.uuid4().hex}"
                send = _tcp if protocol == "audiosocket" else _ws
                pool.submit(send, server.ports[protocol], *make(call))
                if FAULTS[i % len(FAULTS)][0] != "audio before the UUID":
                    calls.append(pool.submit(lambda c=call: c))
    for call in calls:
        server.call_events(call.result(), timeout=15)


def test_file_descriptors_and_memory_return_to_baseline(speech: np.ndarray) -> None:
    srv = ServeProcess("--read-timeout", "1", protocols=("audiosocket", "mediastream"))
    try:
        pid = srv.proc.pid
        for _ in range(3):  # warm up: buffers, thread pools, the allocator
            _round(srv, speech, 24)
        time.sleep(0.5)
        fds, rss = _fds(pid), rss_kb(pid)
        for _ in range(3):
            _round(srv, speech, 24)
        time.sleep(0.5)
        assert _fds(pid) == fds
        assert rss_kb(pid) - rss < 8_000, "resident memory grew by more than 8 MB over 72 more calls"
    finally:
        assert srv.stop() == 0
