"""The HTTP endpoints of `serve` (--dashboard, --metrics) under hostile clients, over real sockets against a real
server process: idle, slow and surplus connections, clients that reset their event streams, and a process
whose descriptors run out (a lowered RLIMIT_NOFILE)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from serve_support import ServeProcess, audiosocket_call

from anger_stream.serve.dashboard import MAX_STREAMS
from anger_stream.serve.http_endpoint import MAX_CONNECTIONS, REQUEST_S


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.contextmanager
def idle_connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    """`n` connections that send nothing (those the kernel does not take within 1 s are left out)."""
    held = []
    try:
        for _ in range(n):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        yield held
    finally:
        for s in held:
            s.close()


def closed_by_server(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        while s.recv(4096):  # a 503 first, for a refused one
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def cpu_ticks(pid: int) -> int:
    """User and system CPU time of a process, in clock ticks (1/100 s)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def health(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
        return response.status


def test_idle_and_surplus_connections_leave_the_calls_their_descriptors(speech: np.ndarray) -> None:
    srv = ServeProcess("--dashboard", "127.0.0.1:0", "--metrics", "127.0.0.1:0")
    try:
        pid, dashboard, metrics = srv.proc.pid, srv.ports["dashboard"], srv.ports["metrics"]
        limit = open_fds(pid) + 2 * MAX_CONNECTIONS + 40  # room for both endpoints' connections and a few calls
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        with idle_connections(dashboard, 500) as on_page, idle_connections(metrics, 500) as on_metrics:
            held = on_page + on_metrics
            time.sleep(0.5)
            assert open_fds(pid) < limit, "the surplus is refused at once"
            calls = [audiosocket_call(srv.ports["audiosocket"], speech) for _ in range(3)]
            assert [srv.call_events(c)[-1]["state"] for c in calls] == ["end"] * 3
            started = time.monotonic()
            assert all(closed_by_server(s, REQUEST_S + 3) for s in held), "idle ones are cut after REQUEST_S"
            assert time.monotonic() - started < REQUEST_S + 3
        assert health(dashboard) == 200
    finally:
        assert srv.stop() == 0
    assert len(srv.stderr) < 10, srv.stderr[:20]
    for endpoint in ("dashboard", "metrics"):
        assert "".join(srv.stderr).count(f"{endpoint}: {MAX_CONNECTIONS} connections open; refusing more") == 1


def test_when_accept_runs_out_of_descriptors_the_endpoint_backs_off_says_so_once_and_recovers() -> None:
    srv = ServeProcess("--dashboard", "127.0.0.1:0")
    try:
        pid, port = srv.proc.pid, srv.ports["dashboard"]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_fds(pid) + 8, hard))
        before = open_fds(pid)
        with idle_connections(port, 60):
            time.sleep(2)
            cpu = cpu_ticks(pid)
            time.sleep(2)
            cpu = cpu_ticks(pid) - cpu
            assert cpu < 100, f"{cpu} clock ticks of CPU in 2 s: a busy loop"  # 100 ticks = 1 s
        deadline = time.monotonic() + REQUEST_S + 2  # the clients gone, the server has room again
        while True:
            with contextlib.suppress(OSError):
                if health(port) == 200:
                    break
            assert time.monotonic() < deadline, "the endpoint did not recover"
        assert open_fds(pid) <= before + 1
    finally:
        assert srv.stop() == 0
    stderr = "".join(srv.stderr)
    assert stderr.count("cannot accept connections") == 1 and "accepting connections again" in stderr, stderr
    assert len(srv.stderr) < 10, srv.stderr[:20]


def test_slow_clients_are_cut_and_event_slots_are_freed_when_pages_reset() -> None:
    srv = ServeProcess("--dashboard", "127.0.0.1:0")
    try:
        port = srv.ports["dashboard"]
        slow = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        slow.settimeout(1)
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":  # a byte a second, never the end of the headers
            slow.sendall(bytes([byte]))
            with contextlib.suppress(TimeoutError):
                if slow.recv(64) == b"":
                    break
        else:
            raise AssertionError("a slow client was never cut")
        assert time.monotonic() - started < REQUEST_S + 2
        slow.close()

        def stream() -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            return s

        pages = [stream() for _ in range(MAX_STREAMS)]
        assert all(p.recv(64).startswith(b"HTTP/1.1 200") for p in pages)
        extra = stream()
        assert extra.recv(64).startswith(b"HTTP/1.1 503"), "every slot is taken"
        extra.close()
        for p in pages:  # reset, as a browser tab killed or a network gone does
            p.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            p.close()
        reset_at = time.monotonic()
        while True:
            again = stream()
            if again.recv(64).startswith(b"HTTP/1.1 200"):
                break
            again.close()
            assert time.monotonic() - reset_at < 2, "the slots of the reset pages were not freed"
            time.sleep(0.1)
        again.close()
    finally:
        assert srv.stop() == 0
    assert len(srv.stderr) < 10, srv.stderr[:20]
