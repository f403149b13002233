"""Callers that attack the server: floods of audio, pings and DTMF, slow senders, pipelined requests.

Each runs over real sockets against `anger-stream serve`, with a well-behaved real-time call alongside where
it matters; the bounds asserted (memory, closing) have wide margins, they are not timings.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid

import numpy as np
import pytest
from serve_support import ServeProcess, assert_same_events, expected_lines, paced_audiosocket_call, rss_kb

from anger_stream.serve import audiosocket as a
from anger_stream.serve import mediastream as m


def _flood(port: int, seconds: float, sent: list[int]) -> None:
    """An AudioSocket call sending 65,532-byte audio frames as fast as the socket takes them."""
    frame = a.frame(a.AUDIO, bytes(65532))
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(a.uuid_frame(str(uuid.uuid4())))
        s.settimeout(0.5)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                sent[0] += s.send(frame)
            except TimeoutError:  # the server stopped reading: TCP pushes back
                continue
            except OSError:
                return


def test_a_flooding_caller_is_paced_and_costs_a_real_time_call_nothing(speech: np.ndarray) -> None:
    srv = ServeProcess()
    try:
        port, good, sent = srv.ports["audiosocket"], str(uuid.uuid4()), [0]
        rss = rss_kb(srv.proc.pid)
        flooder = threading.Thread(target=_flood, args=(port, 6.0, sent))
        flooder.start()
        paced_audiosocket_call(port, speech, good)
        grown = rss_kb(srv.proc.pid) - rss
        flooder.join()
        assert_same_events(srv.call_events(good)[:-1], expected_lines(speech, 8000, good))
        assert sent[0] < 100_000_000, "the server read everything it was sent"  # 6 s unpaced: gigabytes
        assert grown < 200_000, f"resident memory grew by {grown} kB"
        started = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - started < 10
    finally:
        srv.stop()


def test_a_peer_that_floods_pings_is_closed() -> None:
    from websockets.client import ClientProtocol
    from websockets.protocol import State
    from websockets.uri import parse_uri

    srv = ServeProcess(protocols=("mediastream",))
    try:
        ws = ClientProtocol(parse_uri(f"ws://127.0.0.1:{srv.ports['mediastream']}/media"))
        with socket.create_connection(("127.0.0.1", srv.ports["mediastream"])) as s:
            ws.send_request(ws.connect())
            s.sendall(b"".join(ws.data_to_send()))
            while ws.state is State.CONNECTING:
                ws.receive_data(s.recv(4096))
            ws.send_text(m.start_message("MZping", "CAping").encode())
            s.sendall(b"".join(ws.data_to_send()))
            for _ in range(64):
                ws.send_ping(bytes(125))
            pings = b"".join(ws.data_to_send())
            s.settimeout(30)  # the pongs are never read
            with pytest.raises(ConnectionError):  # reset by the server (not a timeout)
                while True:
                    s.sendall(pings)
        final = srv.call_events("CAping")[-1]
        assert final["state"] == "error" and "more than 50 pings a second" in final["error"]
    finally:
        assert srv.stop() == 0


def test_slow_senders_are_closed() -> None:
    srv = ServeProcess("--read-timeout", "1", protocols=("audiosocket", "mediastream"))
    trickles = {
        "header": a.uuid_frame(str(uuid.uuid4())),  # a byte at a time: no frame ever completes
        "audio": a.uuid_frame(call := str(uuid.uuid4())) + a.audio_frame(np.zeros(4, dtype=np.int16)) * 40,
        "http": b"GET /media HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n",
    }
    closed: dict[str, float] = {}

    def trickle(name: str, data: bytes) -> None:
        port = srv.ports["mediastream" if name == "http" else "audiosocket"]
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port)) as s:
            step = 1 if name != "audio" else len(a.audio_frame(np.zeros(4, dtype=np.int16)))
            try:
                for i in range(0, len(data), step):
                    s.sendall(data[i : i + step])
                    time.sleep(0.25)
                    if time.monotonic() - started > 20:
                        return
                s.settimeout(20)
                s.recv(1)
            except OSError:
                pass
        closed[name] = time.monotonic() - started

    try:
        threads = [threading.Thread(target=trickle, args=item) for item in trickles.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert set(closed) == set(trickles) and max(closed.values()) < 15, closed
        assert "audio arrives at less than 0.5 times real time" in srv.call_events(call)[-1]["error"]
    finally:
        assert srv.stop() == 0


def test_a_dtmf_flood_is_closed_with_bounded_output(speech: np.ndarray) -> None:
    srv = ServeProcess()
    try:
        call = str(uuid.uuid4())
        with socket.create_connection(("127.0.0.1", srv.ports["audiosocket"])) as s:
            s.sendall(a.uuid_frame(call) + a.audio_frame(speech[:1600]))
            with contextlib.suppress(OSError):  # reset by the server
                s.sendall(a.dtmf_frame("7") * 20_000)
        events = srv.call_events(call, timeout=30)
        dtmf = [e for e in events if e.get("state") == "dtmf"]
        assert 0 < len(dtmf) <= 100
        assert events[-1]["error_kind"] == "flood" and "more than 20 DTMF digits a second" in events[-1]["error"]
    finally:
        assert srv.stop() == 0


def test_requests_pipelined_after_health_are_dropped() -> None:
    srv = ServeProcess(protocols=("mediastream",))
    try:
        request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        with socket.create_connection(("127.0.0.1", srv.ports["mediastream"])) as s:
            s.sendall(request * 3 + b"\x00garbage\r\n\r\n")
            s.settimeout(10)
            reply = b"".join(iter(lambda: s.recv(4096), b""))
        assert reply.startswith(b"HTTP/1.1 200 OK") and reply.count(b"HTTP/1.1") == 1
    finally:
        assert srv.stop() == 0
    assert "error" not in "".join(srv.stderr)
