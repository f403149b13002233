"""HAProxy (deploy/*.cfg) in front of two `anger-stream serve` processes: every call comes back complete
from whichever server took it, and both servers take calls."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    ServeProcess,
    assert_same_events,
    audiosocket_call,
    expected_lines,
    free_port,
    mediastream_call,
    mulaw_roundtrip,
    self_signed_certificate,
)

from anger_stream.serve.security import TWILIO_ENV

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="needs HAProxy (apt-get install haproxy)")


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listening on {port}")


@pytest.mark.parametrize("config", ["audiosocket", "mediastream", "mediastream-tls"])
def test_balanced_calls_come_back_complete(config: str, speech: np.ndarray, tmp_path: Path) -> None:
    protocol, tls = config.split("-")[0], config.endswith("-tls")
    auth = {TWILIO_ENV: "0123456789abcdef0123456789abcdef"} if tls else {}  # the servers check Twilio's signature
    servers = [ServeProcess(protocols=(protocol,), env=auth) for _ in range(2)]
    port = free_port()
    env = {
        **os.environ,
        "LB_BIND": f"127.0.0.1:{port}",
        **{f"ANGER{i + 1}": f"127.0.0.1:{s.ports[protocol]}" for i, s in enumerate(servers)},
    }
    caller = audiosocket_call if protocol == "audiosocket" else mediastream_call
    if tls:  # wss:// to HAProxy, which holds a throwaway self-signed certificate and passes the signature on
        cert, key = self_signed_certificate(tmp_path)
        (tmp_path / "lb.pem").write_bytes(cert.read_bytes() + key.read_bytes())
        env["LB_CERT"] = str(tmp_path / "lb.pem")
        signed = f"wss://127.0.0.1:{port}/media".encode()
        signature = base64.b64encode(hmac.new(auth[TWILIO_ENV].encode(), signed, hashlib.sha1).digest()).decode()
        caller = partial(
            mediastream_call, tls=ssl.create_default_context(cafile=cert), headers={"X-Twilio-Signature": signature}
        )
    cfg = DEPLOY / f"haproxy-{config}.cfg"
    lb = subprocess.Popen([HAPROXY, "-f", str(cfg), "-db"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_port(port)
        time.sleep(0.3)  # the first health checks
        rng = np.random.default_rng(2)
        clips = [speech[: rng.integers(12000, len(speech))] for _ in range(6)]
        together = threading.Barrier(len(clips))  # all connected at once: leastconn must use both servers
        with ThreadPoolExecutor(len(clips)) as pool:
            calls = list(pool.map(lambda clip: caller(port, clip, frame=800, together=together), clips))
        taken = {0: 0, 1: 0}
        for call, clip in zip(calls, clips, strict=True):
            i = _server_of(servers, call)
            events = servers[i].call_events(call)
            assert events[-1]["state"] == "end"
            assert_same_events(
                events[:-1], expected_lines(clip if protocol == "audiosocket" else mulaw_roundtrip(clip), 8000, call)
            )
            assert not any(e.get("call") == call for e in servers[1 - i].events)
            taken[i] += 1
        assert sum(taken.values()) == len(calls) and min(taken.values()) >= 1, taken
        for srv in servers:
            assert not [e for e in srv.events if e.get("state") == "error"], "health checks must not be errors"
    finally:
        lb.terminate()
        lb.wait(10)
        for srv in servers:
            assert srv.stop() == 0


def _server_of(servers: list[ServeProcess], call: str, timeout: float = 20.0) -> int:
    """Index of the server that reported the end of `call` (collecting every server's lines meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for i, srv in enumerate(servers):
            while not srv.lines.empty():
                srv.events.append(srv.lines.get())
            if any(e.get("call") == call and e.get("state") == "end" for e in srv.events):
                return i
        time.sleep(0.05)
    raise AssertionError(f"no server reported the end of call {call}")
