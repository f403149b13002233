"""Helpers for the telephony tests: speech at 8 kHz, a `anger-stream serve` subprocess, simple callers."""

from __future__ import annotations

import json
import os
import queue
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from anger_stream.detector import AngerDetector
from anger_stream.events import to_json
from anger_stream.serve import audiosocket, mediastream
from tools.channels import mulaw_encode

CLI = str(Path(sys.executable).parent / "anger-stream")
TEXT = "I have been waiting on the phone for an hour and nobody can tell me where my order is."


def make_speech(folder: Path, rate: int = 8000) -> np.ndarray:
    """About 5 s of synthetic speech as int16 at `rate` (espeak-ng, then sox)."""
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("needs espeak-ng and sox to make test speech")
    raw, out = folder / "raw.wav", folder / f"speech{rate}.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), TEXT], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True)
    return sf.read(out, dtype="int16")[0]


def expected_lines(samples: np.ndarray, rate: int, call: str) -> list[dict[str, Any]]:
    """What the single-stream detector reports for the same audio, as parsed JSON lines."""
    detector = AngerDetector(sample_rate=rate)
    events = detector.feed(samples) + detector.flush()
    return [json.loads(to_json(e, call=call)) for e in events]


def assert_same_events(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    """Equal event lists; probabilities may differ by batching rounding (1e-3)."""
    assert [(e["type"], e.get("t_start"), e.get("t_end"), e.get("t")) for e in got] == [
        (e["type"], e.get("t_start"), e.get("t_end"), e.get("t")) for e in want
    ]
    for g, w in zip(got, want, strict=True):
        for key in ("p", "p_max", "dbfs"):
            if w.get(key) is not None:
                assert abs(g[key] - w[key]) <= 1e-3 + (0.05 if key == "dbfs" else 0), (key, g, w)
            else:
                assert g.get(key) is None


def self_signed_certificate(folder: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A throwaway self-signed certificate for `name` (also valid for 127.0.0.1) and its key, made with the
    openssl command-line tool; (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def free_port() -> int:
    """A loopback TCP port nobody listens on (at the time of asking)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def port_in_use() -> Iterator[int]:
    """A loopback port that another socket listens on, for as long as the context lasts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


class ServeProcess:
    """`anger-stream serve` in a subprocess; stdout lines are collected as parsed JSON."""

    def __init__(
        self,
        *args: str,
        protocols: tuple[str, ...] = ("audiosocket",),
        workers: int = 1,
        timeout: float = 30.0,
        host: str = "127.0.0.1",
        env: dict[str, str] | None = None,
    ) -> None:
        cmd = [CLI, "serve", *(a for p in protocols for a in (f"--{p}", f"{host}:0")), "--workers", str(workers)]
        cmd += args
        environ = {**os.environ, **(env or {})}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ)
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        self.ports: dict[str, int] = {}  # by protocol, and "metrics" or "dashboard" when served
        self.listening: list[dict[str, Any]] = []  # every worker's, for every protocol
        self.events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(self.listening) < len(protocols) * workers:
            line = self.next(deadline - time.monotonic())
            if line.get("state") == "listening":
                assert self.ports.setdefault(line["protocol"], line["port"]) == line["port"]
                if line["protocol"] in protocols:
                    self.listening.append(line)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def next(self, timeout: float = 20.0) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=max(timeout, 0.01))
        except queue.Empty:
            raise AssertionError(f"no output from the server; stderr: {''.join(self.stderr)}") from None

    def call_events(self, call: str, timeout: float = 20.0) -> list[dict[str, Any]]:
        """Every line of one call up to its final status (start status excluded)."""
        deadline = time.monotonic() + timeout
        while not any(e.get("call") == call and e.get("state") in ("end", "error", "interrupted") for e in self.events):
            self.events.append(self.next(deadline - time.monotonic()))
        return [e for e in self.events if e.get("call") == call and e.get("state") != "start"]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def audiosocket_call(
    port: int, samples: np.ndarray, call: str | None = None, frame: int = 160, together: threading.Barrier | None = None
) -> str:
    """A whole AudioSocket call at 8 kHz, as fast as the socket takes it; returns the call id.

    `together`: once connected, wait for the other calls of the barrier to connect before sending.
    """
    call = call or str(uuid.uuid4())
    with socket.create_connection(("127.0.0.1", port)) as s:
        if together is not None:
            together.wait(30)
        s.sendall(audiosocket.uuid_frame(call))
        for i in range(0, len(samples), frame):
            s.sendall(audiosocket.audio_frame(samples[i : i + frame], 8000))
        hang_up(s)
    return call


def hang_up(s: socket.socket) -> None:
    """End an AudioSocket call: the hangup frame, then wait until the server closes the connection."""
    s.sendall(audiosocket.hangup_frame())
    s.shutdown(socket.SHUT_WR)
    s.settimeout(10)
    while s.recv(4096):
        pass


def paced_audiosocket_call(port: int, samples: np.ndarray, call: str) -> None:
    """A well-behaved AudioSocket caller in real time (20 ms frames at 8 kHz)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(audiosocket.uuid_frame(call))
        t0 = time.monotonic()
        for n, i in enumerate(range(0, len(samples), 160)):
            time.sleep(max(t0 + n * 0.02 - time.monotonic(), 0))
            s.sendall(audiosocket.audio_frame(samples[i : i + 160]))
        s.sendall(audiosocket.hangup_frame())


def rss_kb(pid: int) -> int:
    """Resident memory of a process, in kB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def mediastream_call(
    port: int,
    samples: np.ndarray,
    call: str | None = None,
    frame: int = 160,
    together: threading.Barrier | None = None,
    tls: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """A whole Media Streams call (mu-law 8 kHz), as fast as the socket takes it; returns the call id.

    `together`: once the WebSocket is open, wait for the other calls of the barrier before sending.
    `tls`: connect with wss:// and this client context; `headers`: extra headers of the upgrade request.
    """
    from websockets.sync.client import connect

    call = call or f"CA{uuid.uuid4().hex}"
    sid = f"MZ{uuid.uuid4().hex}"
    payload = mulaw_encode(samples.astype(np.float32) / 32768.0)
    url = f"{'wss' if tls else 'ws'}://127.0.0.1:{port}/media"
    with connect(url, ssl=tls, additional_headers=headers) as ws:
        if together is not None:
            together.wait(30)
        ws.send(mediastream.connected_message())
        ws.send(mediastream.start_message(sid, call))
        for n, i in enumerate(range(0, len(payload), frame)):
            ws.send(mediastream.media_message(sid, payload[i : i + frame], n + 1, i // 8))
        ws.send(mediastream.stop_message(sid, call))
    return call


def mulaw_roundtrip(samples: np.ndarray) -> np.ndarray:
    """int16 -> mu-law -> float, what the server decodes from `mediastream_call`."""
    from anger_stream.codec import decode

    return decode(mulaw_encode(samples.astype(np.float32) / 32768.0), "mulaw")


def websocket_pcm_call(
    port: int,
    samples: np.ndarray,
    metadata: str,
    frame: int = 320,
    tls: ssl.SSLContext | None = None,
    path: str = "/",
    subprotocols: list[str] | None = None,
    texts: dict[int, str] | None = None,
) -> None:
    """A whole L16-over-WebSocket call, as fast as the socket takes it: the `metadata` text message, then
    `samples` (int16, (frames,) or (frames, channels)) in binary messages of `frame` sample frames, each of the
    `texts` before the message of its index; ends with a normal close."""
    from websockets.sync.client import connect

    data = np.ascontiguousarray(samples, dtype="<i2")
    with connect(f"{'wss' if tls else 'ws'}://127.0.0.1:{port}{path}", ssl=tls, subprotocols=subprotocols) as ws:
        ws.send(metadata)
        for n, i in enumerate(range(0, len(data), frame)):
            if texts and n in texts:
                ws.send(texts[n])
            ws.send(data[i : i + frame].tobytes())
