"""Load test for `anger-stream serve`: N concurrent simulated calls in real time, latency from the client side.

    python -m tools.loadtest --protocol audiosocket --calls 300 --duration 20 --file call.wav \
        --target 127.0.0.1:0 --workers 2 [--model models/anger_fcn.int8.onnx]

Starts the server as a subprocess on --target (loopback only), connects every call, then streams the file
(8 kHz, 20 ms frames, each sent when its 20 ms of audio are complete, as a phone would) with call starts
spread over --ramp seconds. Latency of a window = arrival of its JSON line on the server's stdout minus
the time the frame holding the window's last sample was sent. That includes the resampler's look-ahead
(the next frame) and the batching of the ticks. Prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from anger_stream import audio
from anger_stream.serve import audiosocket, mediastream
from tools.telephone import mulaw_encode

RATE = 8_000
FRAME = 160  # 20 ms at 8 kHz
FRAME_S = FRAME / RATE
CLI = str(Path(sys.executable).parent / "anger-stream")


@dataclass
class Call:
    call_id: str
    start_frame: int  # pacing tick at which the call starts streaming
    sent_at: np.ndarray  # wall time each frame was sent
    conn: asyncio.StreamWriter | None = None
    ws: ClientProtocol | None = None  # Media Streams: the WebSocket framing (sans-I/O)
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    windows: int = 0
    final: dict | None = None


def load_audio(path: Path, duration: float) -> np.ndarray:
    """The file as int16 at 8 kHz, looped or cut to `duration` seconds."""
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    x = audio.resample(audio.mixdown(x), rate, RATE)
    n = round(duration * RATE)
    return (np.clip(np.resize(x, n), -1, 1 - 1 / 32768) * 32768).astype(np.int16)


async def ws_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, uri: str) -> ClientProtocol:
    """Open a WebSocket on a connected socket. Frames are then built by websockets' sans-I/O client and written
    straight to the socket: a coroutine-per-message client would cost as much CPU as the server it loads."""
    ws = ClientProtocol(parse_uri(uri))
    ws.send_request(ws.connect())
    writer.write(b"".join(ws.data_to_send()))
    while ws.state is State.CONNECTING:
        data = await asyncio.wait_for(reader.read(4096), 60)
        if not data:
            raise OSError("the server closed the connection during the WebSocket handshake")
        ws.receive_data(data)
    if ws.handshake_exc is not None:
        raise OSError(f"WebSocket handshake failed: {ws.handshake_exc}")
    return ws


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LoadTest:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.samples = load_audio(args.file, args.duration)
        self.n_frames = -(-len(self.samples) // FRAME)
        ramp_frames = max(round(args.ramp / FRAME_S), 1)
        self.calls = {
            cid: Call(cid, i * ramp_frames // args.calls, np.zeros(self.n_frames))
            for i, cid in enumerate(str(uuid.uuid4()) for _ in range(args.calls))
        }
        frames = [self.samples[i : i + FRAME] for i in range(0, len(self.samples), FRAME)]
        if args.protocol == "audiosocket":
            self.frames = [audiosocket.audio_frame(f, RATE) for f in frames]
        else:
            self.frames = [mulaw_encode(f.astype(np.float32) / 32768.0) for f in frames]
        sr = audio.SAMPLE_RATE
        n16 = len(self.samples) * sr // RATE
        bounds = audio.window_bounds(
            n16, round(audio.WINDOW_S * sr), round(audio.HOP_S * sr), round(audio.MIN_AUDIO_S * sr)
        )
        self.expected_windows = len(bounds)
        self.late_ticks = 0
        self.max_lag = 0.0

    async def start_server(self) -> tuple[asyncio.subprocess.Process, int]:
        host, port = self.args.target.rsplit(":", 1)
        cmd = [CLI, "serve", f"--{self.args.protocol}", f"{host}:{port}", "--threads", str(self.args.threads)]
        if self.args.model:
            cmd += ["--model", str(self.args.model)]
        if self.args.max_batch:
            cmd += ["--max-batch", str(self.args.max_batch)]
        cmd += ["--workers", str(self.args.workers)]
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        ready = 0
        while ready < self.args.workers:  # every worker has its model loaded and listens
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise SystemExit("loadtest: the server did not start")
            msg = json.loads(line)
            if msg.get("state") == "listening":
                ready += 1
        return proc, msg["port"]

    async def read_events(self, proc: asyncio.subprocess.Process) -> None:
        """Match the server's lines to calls; latency of every window line."""
        ended = 0
        while ended < len(self.calls):
            line = await proc.stdout.readline()
            now = time.monotonic()
            if not line:
                return
            msg = json.loads(line)
            call = self.calls.get(msg.get("call"))
            if call is None:
                continue
            if msg["type"] == "window":
                call.windows += 1
                last = min(round(msg["t_end"] * RATE) - 1, len(self.samples) - 1)  # last 8 kHz input sample
                call.latencies.append(now - call.sent_at[last // FRAME])
            elif msg["type"] == "status" and msg["state"] in ("end", "error", "interrupted"):
                call.final = msg
                ended += 1

    async def connect(self, port: int, call: Call) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        call.conn = writer
        if self.args.protocol == "mediastream":
            call.ws = await ws_handshake(reader, writer, f"ws://127.0.0.1:{port}/media")

    def send_frame(self, call: Call, k: int) -> None:
        """Frame k of a call (and the call's opening before frame 0, its end after the last).

        A frame is dropped when the connection is already closed or reset (asyncio's writes do not raise then).
        """
        w = call.conn
        if w.is_closing():
            call.failed += 1
            if call.failed == 1:
                print(f"loadtest: call {call.call_id}: the connection closed before frame {k}", file=sys.stderr)
            return
        if self.args.protocol == "audiosocket":
            w.write((audiosocket.uuid_frame(call.call_id) if k == 0 else b"") + self.frames[k])
            if k == self.n_frames - 1:
                w.write(audiosocket.hangup_frame())
        else:
            ws, sid = call.ws, f"MZ{call.call_id}"
            if k == 0:
                ws.send_text(mediastream.connected_message().encode())
                ws.send_text(mediastream.start_message(sid, call.call_id).encode())
            ws.send_text(mediastream.media_message(sid, self.frames[k], k + 1, k * 20).encode())
            if k == self.n_frames - 1:
                ws.send_text(mediastream.stop_message(sid, call.call_id).encode())
                ws.send_close(1000)
            w.write(b"".join(ws.data_to_send()))
        if k == self.n_frames - 1:
            w.close()

    async def stream(self) -> None:
        """Every 20 ms: the frame that just completed, for every call that is streaming."""
        t0 = time.monotonic() + FRAME_S
        last_tick = max(c.start_frame for c in self.calls.values()) + self.n_frames
        for tick in range(last_tick):
            due = t0 + tick * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = time.monotonic() - due
            self.max_lag = max(self.max_lag, lag)
            self.late_ticks += lag > FRAME_S
            for call in self.calls.values():
                k = tick - call.start_frame
                if 0 <= k < self.n_frames:
                    call.sent_at[k] = time.monotonic()
                    self.send_frame(call, k)

    async def run(self) -> dict:
        proc, port = await self.start_server()
        cpu0, own0 = _cpu_seconds(proc.pid), time.process_time()
        try:
            await asyncio.gather(*(self.connect(port, c) for c in self.calls.values()))
            reader = asyncio.create_task(self.read_events(proc))
            t_start = time.monotonic()
            await self.stream()
            streamed = time.monotonic() - t_start
            try:
                await asyncio.wait_for(reader, 30)
            except TimeoutError:
                print("loadtest: some calls never reported their end", file=sys.stderr)
            cpu, own = _cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
        return self.summary(streamed, cpu, own)

    def summary(self, streamed: float, server_cpu: float, client_cpu: float) -> dict:
        lat = np.array([x for c in self.calls.values() for x in c.latencies]) * 1000
        finals = [c.final for c in self.calls.values()]
        ended = sum(f is not None and f["state"] == "end" for f in finals)
        return {
            "protocol": self.args.protocol,
            "workers": self.args.workers,
            "calls": len(self.calls),
            "call_seconds": round(len(self.samples) / RATE, 2),
            "concurrent_calls": self.peak_concurrency(),
            "calls_completed": ended,
            "calls_failed": len(finals) - ended,
            "windows_expected": self.expected_windows * len(self.calls),
            "windows_received": int(sum(c.windows for c in self.calls.values())),
            "frames_sent": int(sum((c.sent_at > 0).sum() - c.failed for c in self.calls.values())),
            "frames_dropped": int(sum(c.failed for c in self.calls.values())),
            "latency_ms": {
                q: round(float(np.percentile(lat, p)), 1) if len(lat) else None
                for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
            "pacing_late_ticks": self.late_ticks,
            "pacing_max_lag_ms": round(self.max_lag * 1000, 1),
            "server_cpu_percent": round(100 * server_cpu / streamed, 1) if server_cpu >= 0 else None,  # None: it died
            "client_cpu_percent": round(100 * client_cpu / streamed, 1),
            "load_average": os.getloadavg()[0],
        }

    def peak_concurrency(self) -> int:
        starts = sorted(c.start_frame for c in self.calls.values())
        return max(sum(s <= t < s + self.n_frames for s in starts) for t in starts)


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (serve --workers), running or ended; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15])  # utime, stime, and those of waited-for children
    return own / os.sysconf("SC_CLK_TCK") + sum(_cpu_seconds(int(c)) for c in children)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=["audiosocket", "mediastream"], default="audiosocket")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per call (the file loops)")
    parser.add_argument("--file", type=Path, required=True, help="a recorded call (any rate; mixed to mono)")
    parser.add_argument("--target", default="127.0.0.1:0", help="loopback HOST:PORT for the server (0: any)")
    parser.add_argument("--ramp", type=float, default=3.0, help="spread call starts over this many seconds")
    parser.add_argument("--threads", type=int, default=2, help="the server's scoring threads (per worker)")
    parser.add_argument("--workers", type=int, default=1, help="the server's processes (serve --workers)")
    parser.add_argument("--model", help="the server's ONNX model (default: the packaged one)")
    parser.add_argument("--max-batch", type=int, help="the server's most windows per model call")
    args = parser.parse_args(argv)
    if not loopback(args.target.rsplit(":", 1)[0]):
        parser.error("--target must be a loopback address (127.0.0.0/8, ::1, localhost)")
    if not 1 <= args.calls <= 2000 or not 0 < args.duration <= 600:
        parser.error("--calls must be 1..2000 and --duration 0..600 s")
    try:
        result = asyncio.run(LoadTest(args).run())
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        sys.exit(f"loadtest: {exc}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
