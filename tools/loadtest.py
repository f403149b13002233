"""Load test for `anger-stream serve`: N concurrent simulated calls in real time, latency from the client side.

    python -m tools.loadtest --protocol audiosocket --calls 300 --duration 20 --file call.wav \
        --target 127.0.0.1:0 --workers 2 [--model models/anger_fcn.int8.onnx]

Starts the server as a subprocess on --target (loopback only), connects every call, then streams the file
(8 kHz, 20 ms frames, each sent when its 20 ms of audio are complete, as a phone would) with call starts
spread over --ramp seconds. Latency of a window = arrival of its JSON line on the server's stdout minus
the time the frame holding the window's last sample was sent. That includes the resampler's look-ahead
(the next frame) and the batching of the ticks. Prints a JSON summary on stdout, with the server's peak
resident memory and how long it took to exit after SIGTERM (sent while every hostile connection still runs).

Hostile callers beside the real-time calls (docs/reliability.md), whose own lines are not in the latency:
    --flood N       AudioSocket connections sending 65,532-byte audio frames as fast as the server reads
    --ping-flood N  Media Streams connections flooding pings and never reading the pongs
    --slowloris N   connections sending one byte every 5 s (a frame or an HTTP request that never completes)
    --dtmf N        one more AudioSocket call that sends N DTMF frames at once, then audio in real time
    --pong-flood N  Media Streams connections that start a call, send one media message, then pongs as fast as
                    the server reads them
    --stderr-flood N  the server's stderr is a pipe nobody reads, and N connections (spread over the first
                    half of the run) each send one frame the server refuses with a line on stderr
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.uri import parse_uri

from anger_stream import audio
from anger_stream.config import DetectorConfig
from anger_stream.detector import window_bounds
from anger_stream.serve import audiosocket, mediastream
from anger_stream.serve.hub import FINAL_STATES
from tools import cpu_profile
from tools.channels import mulaw_encode

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
    protocol: str = "audiosocket"

    def window_line(self, t_end: float, now: float, samples: int) -> float:
        """Count one of the call's window lines, received at `now`; its latency: from the sending of the frame
        that holds the window's last 8 kHz input sample (`samples`: the call's length in them) to `now`."""
        self.windows += 1
        last = min(round(t_end * RATE) - 1, samples - 1)
        return now - self.sent_at[last // FRAME]


def pcm16(x: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] as the int16 samples a call carries (clipped)."""
    return (np.clip(x, -1, 1 - 1 / 32768) * 32768).astype(np.int16)


def load_audio(path: Path, duration: float) -> np.ndarray:
    """The file as int16 at 8 kHz, looped or cut to `duration` seconds."""
    x, rate = sf.read(path, dtype="float32", always_2d=True)
    x = audio.resample(audio.mixdown(x), rate, RATE)
    return pcm16(np.resize(x, round(duration * RATE)))


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
        self.protocols = ["audiosocket", "mediastream"] if args.protocol == "mixed" else [args.protocol]
        self.calls = self.new_calls()
        self.done: list[Call] = []  # the calls of the rounds finished
        frames = [self.samples[i : i + FRAME] for i in range(0, len(self.samples), FRAME)]
        self.frames = {
            "audiosocket": [audiosocket.audio_frame(f, RATE) for f in frames],
            "mediastream": [mulaw_encode(f.astype(np.float32) / 32768.0) for f in frames],
        }
        self.expected_windows = len(window_bounds(len(self.samples) * audio.SAMPLE_RATE // RATE))
        self.late_ticks = 0
        self.max_lag = 0.0
        self.streaming = True  # hostile connections run until the server closes them or stops
        self.hostile: dict[str, list[float]] = {
            "flood_bytes": [],
            "ping_flood_closed_s": [],
            "slowloris_closed_s": [],
            "pong_flood_closed_s": [],
            "stderr_flood_sent": [],
        }
        self.dtmf_call = str(uuid.uuid4())
        self.dtmf_lines = 0
        self.rss_mb: list[tuple[float, float]] = []  # (time, MB)
        self.rounds: list[dict] = []
        self.parent_cpu = 0.0  # CPU seconds of the server's own process (not its workers) while streaming
        self.profile: dict[str, float] | None = None  # --profile: the server's CPU by library
        self.on_started: Callable[[dict[str, int]], None] | None = None  # given the ports, before the first call

    def new_calls(self) -> dict[str, Call]:
        """A round of calls with fresh ids, protocols taking turns (--protocol mixed)."""
        ramp_frames, n, protocols = max(round(self.args.ramp / FRAME_S), 1), self.args.calls, self.protocols
        return {
            cid: Call(cid, i * ramp_frames // n, np.zeros(self.n_frames), protocol=protocols[i % len(protocols)])
            for i, cid in enumerate(str(uuid.uuid4()) for _ in range(n))
        }

    async def start_server(self) -> tuple[asyncio.subprocess.Process, dict[str, int]]:
        host, port = self.args.target.rsplit(":", 1)
        cmd = [CLI, "serve", *(a for p in self.protocols for a in (f"--{p}", f"{host}:{port}"))]
        cmd += ["--threads", str(self.args.threads)]
        if self.args.model:
            cmd += ["--model", str(self.args.model)]
        if self.args.max_batch:
            cmd += ["--max-batch", str(self.args.max_batch)]
        cmd += ["--workers", str(self.args.workers), "--read-timeout", str(self.args.read_timeout)]
        for endpoint in ("metrics", "dashboard"):
            cmd += [f"--{endpoint}", "127.0.0.1:0"] if getattr(self.args, endpoint) else []
        stderr = asyncio.subprocess.PIPE if self.args.stderr_flood else None  # never read
        proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=stderr, limit=1 << 20)
        ready, ports = 0, {}
        while ready < self.args.workers * len(self.protocols):  # every worker has its model loaded and listens
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            if not line:
                raise SystemExit("loadtest: the server did not start")
            msg = json.loads(line)
            if msg.get("state") == "listening":
                ready += msg["protocol"] in self.protocols
                ports[msg["protocol"]] = msg["port"]  # and the metrics or dashboard port
        return proc, ports

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
            self.dtmf_lines += msg.get("call") == self.dtmf_call
            if call is None:
                continue
            if msg["type"] == "window":
                call.latencies.append(call.window_line(msg["t_end"], now, len(self.samples)))
            elif msg["type"] == "status" and msg["state"] in FINAL_STATES:
                call.final = msg
                ended += 1

    async def connect(self, ports: dict[str, int], call: Call) -> None:
        port = ports[call.protocol]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        call.conn = writer
        if call.protocol == "mediastream":
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
        frames = self.frames[call.protocol]
        if call.protocol == "audiosocket":
            w.write((audiosocket.uuid_frame(call.call_id) if k == 0 else b"") + frames[k])
            if k == self.n_frames - 1:
                w.write(audiosocket.hangup_frame())
        else:
            ws, sid = call.ws, f"MZ{call.call_id}"
            if k == 0:
                ws.send_text(mediastream.connected_message().encode())
                ws.send_text(mediastream.start_message(sid, call.call_id).encode())
            ws.send_text(mediastream.media_message(sid, frames[k], k + 1, k * 20).encode())
            if k == self.n_frames - 1:
                ws.send_text(mediastream.stop_message(sid, call.call_id).encode())
                ws.send_close(1000)
            w.write(b"".join(ws.data_to_send()))
        if k == self.n_frames - 1:
            w.close()

    async def flood(self, port: int) -> None:
        """An AudioSocket call sending 65,532-byte audio frames as fast as the server reads them."""
        sent = 0
        frame = audiosocket.audio_frame(np.resize(self.samples, 32766), RATE)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(audiosocket.uuid_frame(uuid.uuid4()))
            while self.streaming and not writer.is_closing():
                writer.write(frame)
                await writer.drain()  # waits while the server does not read: TCP pushes back
                sent += len(frame)
        except OSError:
            pass
        self.hostile["flood_bytes"].append(sent)

    async def ping_flood(self, port: int) -> None:
        """A Media Streams call that floods pings and never reads the pongs; seconds until the server closes it."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        ws = await ws_handshake(reader, writer, f"ws://127.0.0.1:{port}/media")
        ws.send_text(mediastream.start_message("MZping", f"CAping{uuid.uuid4().hex}").encode())
        writer.write(b"".join(ws.data_to_send()))
        for _ in range(64):
            ws.send_ping(bytes(125))
        pings, started = b"".join(ws.data_to_send()), time.monotonic()
        try:
            while self.streaming:
                writer.write(pings)
                await writer.drain()
                await asyncio.sleep(0.001)  # about 8 MB/s, and the calls' pacing in this process keeps time
        except OSError:
            self.hostile["ping_flood_closed_s"].append(round(time.monotonic() - started, 2))

    async def pong_flood(self, port: int) -> None:
        """A Media Streams call that sends pongs as fast as the server reads them; seconds until it is closed."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 16)
        ws = await ws_handshake(reader, writer, f"ws://127.0.0.1:{port}/media")
        ws.send_text(mediastream.start_message("MZpong", f"CApong{uuid.uuid4().hex}").encode())
        ws.send_text(mediastream.media_message("MZpong", self.frames["mediastream"][0], 1, 0).encode())
        writer.write(b"".join(ws.data_to_send()))
        for _ in range(64):
            ws.send_pong(b"")
        pongs, started = b"".join(ws.data_to_send()), time.monotonic()
        try:
            while self.streaming:
                writer.write(pongs)
                await writer.drain()
                await asyncio.sleep(0.001)
        except OSError:
            self.hostile["pong_flood_closed_s"].append(round(time.monotonic() - started, 2))

    async def stderr_flood(self, port: int) -> None:
        """--stderr-flood connections, spread over the first half of the run, each sending one frame the server
        refuses (an AudioSocket frame of unknown kind, or a Media Streams upgrade to a bad request)."""
        bad = audiosocket.frame(0x42, b"x" * 100) if self.protocols[0] == "audiosocket" else b"GET / HTTP/1.0\r\n\r\n"
        pause = self.n_frames * FRAME_S / 2 / self.args.stderr_flood
        sent = 0
        for _ in range(self.args.stderr_flood):
            if not self.streaming:
                break
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(bad)
                await writer.drain()
                writer.close()
                sent += 1
            except OSError:
                pass
            await asyncio.sleep(pause)
        self.hostile["stderr_flood_sent"].append(sent)

    async def slowloris(self, port: int) -> None:
        """One byte every 5 s of a frame or HTTP request that never completes; seconds until the server closes it."""
        if self.protocols[0] == "audiosocket":
            data = audiosocket.uuid_frame(uuid.uuid4()) + audiosocket.audio_frame(self.samples[:FRAME], RATE)
        else:
            data = b"GET /media HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        for i in range(len(data)):
            if not self.streaming:
                return
            writer.write(data[i : i + 1])
            try:
                if not await asyncio.wait_for(reader.read(1), 5.0):
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        self.hostile["slowloris_closed_s"].append(round(time.monotonic() - started, 2))

    async def dtmf_flood(self, port: int) -> None:
        """An AudioSocket call that sends --dtmf DTMF frames at once, then its audio in real time."""
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        frames = self.frames["audiosocket"]
        writer.write(audiosocket.uuid_frame(self.dtmf_call) + frames[0])
        writer.write(audiosocket.dtmf_frame("5") * self.args.dtmf)
        await writer.drain()
        started = time.monotonic()
        for k in range(1, self.n_frames):
            await asyncio.sleep(max(started + k * FRAME_S - time.monotonic(), 0))
            writer.write(frames[k])
        writer.write(audiosocket.hangup_frame())
        await writer.drain()
        writer.close()

    async def watch_memory(self, pid: int) -> None:
        """The server's resident memory (all its processes), twice a second."""
        while True:
            self.rss_mb.append((time.monotonic(), _rss_mb(pid)))
            await asyncio.sleep(0.5)

    def hostile_tasks(self, ports: dict[str, int]) -> list[asyncio.Task]:
        a, first = self.args, ports[self.protocols[0]]
        coros = [self.flood(ports["audiosocket"]) for _ in range(a.flood)]
        coros += [self.ping_flood(ports["mediastream"]) for _ in range(a.ping_flood)]
        coros += [self.slowloris(first) for _ in range(a.slowloris)]
        coros += [self.dtmf_flood(ports["audiosocket"])] if a.dtmf else []
        coros += [self.pong_flood(ports["mediastream"]) for _ in range(a.pong_flood)]
        coros += [self.stderr_flood(first)] if a.stderr_flood else []
        return [asyncio.create_task(c) for c in coros]

    async def stream(self) -> None:
        """Every 20 ms: the frame that just completed, for every call that is streaming."""
        t0 = time.monotonic() + FRAME_S
        last_tick = max(c.start_frame for c in self.calls.values()) + self.n_frames
        for tick in range(last_tick):
            due = t0 + tick * FRAME_S
            # a late tick still yields: the server's lines are read between ticks, else its stdout fills
            await asyncio.sleep(max(due - time.monotonic(), 0.0))
            lag = time.monotonic() - due
            self.max_lag = max(self.max_lag, lag)
            self.late_ticks += lag > FRAME_S
            for call in self.calls.values():
                k = tick - call.start_frame
                if 0 <= k < self.n_frames:
                    call.sent_at[k] = time.monotonic()
                    self.send_frame(call, k)

    async def run(self) -> dict:
        proc, ports = await self.start_server()
        if self.args.client_cpu is not None:  # the server (started above) keeps every core
            os.sched_setaffinity(0, {self.args.client_cpu})
        if self.on_started is not None:
            self.on_started(ports)
        memory = asyncio.create_task(self.watch_memory(proc.pid))
        cpu0, own0, parent0 = _cpu_seconds(proc.pid), time.process_time(), _own_cpu_seconds(proc.pid)
        hostile: list[asyncio.Task] = []
        sigterm_s = None
        try:
            t_start = time.monotonic()
            for r in range(self.args.rounds):
                if r:
                    self.calls = self.new_calls()
                await asyncio.gather(*(self.connect(ports, c) for c in self.calls.values()))
                reader = asyncio.create_task(self.read_events(proc))
                hostile = hostile or self.hostile_tasks(ports)
                profiling = asyncio.create_task(self.sample(proc.pid)) if self.args.profile and not r else None
                await self.stream()
                if profiling is not None:
                    await profiling
                try:
                    await asyncio.wait_for(reader, 30)
                except TimeoutError:
                    print("loadtest: some calls never reported their end", file=sys.stderr)
                self.done += self.calls.values()
                self.rounds.append(self.round_summary())
            streamed = time.monotonic() - t_start
            cpu, own = _cpu_seconds(proc.pid) - cpu0, time.process_time() - own0
            self.parent_cpu = _own_cpu_seconds(proc.pid) - parent0
        finally:
            if proc.returncode is None:
                stopping = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
                sigterm_s = round(time.monotonic() - stopping, 2)
            self.streaming = False
            memory.cancel()
            await asyncio.gather(*hostile, return_exceptions=True)
        return self.summary(streamed, cpu, own, sigterm_s)

    async def sample(self, pid: int) -> None:
        """--profile: the server's CPU by library over the steady middle of the round (after the ramp)."""
        seconds = min(self.args.duration - 4.0, 15.0)
        await asyncio.sleep(self.args.ramp + 2.0)
        self.profile = await cpu_profile.record(cpu_profile.process_tree(pid), seconds)

    def round_summary(self) -> dict:
        lat = np.array([x for c in self.calls.values() for x in c.latencies]) * 1000
        return {
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "windows_received": int(sum(c.windows for c in self.calls.values())),
            "rss_mb": self.rss_mb[-1][1] if self.rss_mb else None,
            "load_average": os.getloadavg()[0],
            "t": time.monotonic(),
        }

    def memory_slope(self) -> dict | None:
        """The server's resident memory after the first round (the warm-up) as a straight line: MB and % per hour."""
        if len(self.rounds) < 3 or not self.rounds[0]["rss_mb"]:
            return None
        warm, t0, t1 = self.rounds[0]["rss_mb"], self.rounds[0]["t"], self.rounds[-1]["t"]
        t, mb = np.array([(t, mb) for t, mb in self.rss_mb if t0 - 1 <= t <= t1]).T
        per_hour = float(np.polyfit(t - t0, mb, 1)[0]) * 3600
        return {
            "after_warm_up_mb": warm,
            "mb_per_hour": round(per_hour, 2),
            "percent_per_hour": round(100 * per_hour / warm, 2),
        }

    def summary(self, streamed: float, server_cpu: float, client_cpu: float, sigterm_s: float | None) -> dict:
        lat = np.array([x for c in self.done for x in c.latencies]) * 1000
        finals = [c.final for c in self.done]
        ended = sum(f is not None and f["state"] == "end" for f in finals)
        return {
            "protocol": self.args.protocol,
            "workers": self.args.workers,
            "calls": len(self.done),
            "call_seconds": round(len(self.samples) / RATE, 2),
            "concurrent_calls": self.peak_concurrency(),
            "calls_completed": ended,
            "calls_failed": len(finals) - ended,
            "windows_expected": self.expected_windows * len(self.done),
            "windows_received": int(sum(c.windows for c in self.done)),
            "frames_sent": int(sum((c.sent_at > 0).sum() - c.failed for c in self.done)),
            "frames_dropped": int(sum(c.failed for c in self.done)),
            "latency_ms": {
                q: round(float(np.percentile(lat, p)), 1) if len(lat) else None
                for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
            },
            "pacing_late_ticks": self.late_ticks,
            "pacing_max_lag_ms": round(self.max_lag * 1000, 1),
            "server_cpu_percent": round(100 * server_cpu / streamed, 1) if server_cpu >= 0 else None,  # None: it died
            # --workers N: the parent, which serves --metrics and --dashboard and waits for the workers
            "server_parent_cpu_percent": round(100 * self.parent_cpu / streamed, 2) if self.args.workers > 1 else None,
            "client_cpu_percent": round(100 * client_cpu / streamed, 1),
            "server_cpu_ms_per_call_s": round(1000 * server_cpu / self.call_seconds(), 3),
            **({"bare_model": self.bare_model(1000 * server_cpu / self.call_seconds())} if self.args.bare else {}),
            **({"server_profile": self.profile} if self.args.profile else {}),
            "load_average": os.getloadavg()[0],
            "server_rss_mb": {"start": self.rss_mb[0][1], "max": max(mb for _, mb in self.rss_mb)},
            "sigterm_s": sigterm_s,
            **(
                {"rounds": [{k: v for k, v in r.items() if k != "t"} for r in self.rounds]}
                if len(self.rounds) > 1
                else {}
            ),
            **({"memory_slope": self.memory_slope()} if len(self.rounds) > 2 else {}),
            **self.hostile_summary(),
        }

    def call_seconds(self) -> float:
        """Seconds of call audio the server received in all rounds."""
        return len(self.done) * len(self.samples) / RATE

    def bare_model(self, server_ms: float) -> dict:
        """The server's model alone (one thread, batch 32, in this process) on windows of the same speech: its
        CPU per call-second for the windows the calls got, and the server's CPU as a multiple of it."""
        from anger_stream.model import AngerModel

        model, config = AngerModel(self.args.model, threads=1), DetectorConfig()
        window, hop = config.window, config.hop
        x16 = audio.resample(self.samples.astype(np.float32) / 32768, RATE, audio.SAMPLE_RATE)
        starts = range(0, max(len(x16) - window, 1), hop)
        batch = np.stack([audio.prepare_window(x16[s : s + window], window) for s in starts][:32])
        model.predict(batch)
        runs, cpu0 = 0, time.process_time()
        while time.process_time() - cpu0 < 2.0:
            model.predict(batch)
            runs += 1
        per_window = (time.process_time() - cpu0) / (runs * len(batch))
        windows = int(sum(c.windows for c in self.done))
        ms = 1000 * per_window * windows / self.call_seconds()
        return {
            "batch": len(batch),
            "cpu_us_per_window": round(per_window * 1e6, 1),
            "cpu_ms_per_call_s": round(ms, 3),
            "server_over_model": round(server_ms / ms, 2) if ms else None,
        }

    def hostile_summary(self) -> dict:
        a, h = self.args, self.hostile
        out: dict = {}
        if a.flood:
            out["flood"] = {"connections": a.flood, "mb_sent": round(sum(h["flood_bytes"]) / 1e6, 1)}
        if a.ping_flood:
            closed = h["ping_flood_closed_s"]
            out["ping_flood"] = {"connections": a.ping_flood, "closed": len(closed), "max_s": max(closed, default=None)}
        if a.slowloris:
            closed = h["slowloris_closed_s"]
            out["slowloris"] = {"connections": a.slowloris, "closed": len(closed), "max_s": max(closed, default=None)}
        if a.dtmf:
            out["dtmf"] = {"frames": a.dtmf, "lines_out": self.dtmf_lines}
        if a.pong_flood:
            closed = h["pong_flood_closed_s"]
            out["pong_flood"] = {"connections": a.pong_flood, "closed": len(closed), "max_s": max(closed, default=None)}
        if a.stderr_flood:
            out["stderr_flood"] = {"connections": sum(h["stderr_flood_sent"])}
        return out

    def peak_concurrency(self) -> int:
        starts = sorted(c.start_frame for c in self.calls.values())
        return max(sum(s <= t < s + self.n_frames for s in starts) for t in starts)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name; [] once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its children (serve --workers), running or ended; 0 once it is gone."""
    # utime, stime, and those of waited-for children, of each process
    ticks = sum(int(f) for p in cpu_profile.process_tree(pid) for f in _stat(p)[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds(pid: int) -> float:
    """CPU seconds of one process alone (utime and stime); 0 once it is gone."""
    return sum(int(f) for f in _stat(pid)[11:13]) / os.sysconf("SC_CLK_TCK")


def _own_rss_kb(pid: int) -> int:
    """Resident memory of one process in kB; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (serve --workers), in MB; 0 once it is gone."""
    return round(sum(_own_rss_kb(p) for p in cpu_profile.process_tree(pid)) / 1024, 1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The load test's options, checked (a usage error exits)."""
    parser = argparse.ArgumentParser(prog="python -m tools.loadtest", description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=["audiosocket", "mediastream", "mixed"], default="audiosocket")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per call (the file loops)")
    parser.add_argument("--file", type=Path, required=True, help="a recorded call (any rate; mixed to mono)")
    parser.add_argument("--target", default="127.0.0.1:0", help="loopback HOST:PORT for the server (0: any)")
    parser.add_argument("--ramp", type=float, default=3.0, help="spread call starts over this many seconds")
    parser.add_argument("--threads", type=int, default=2, help="the server's scoring threads (per worker)")
    parser.add_argument("--workers", type=int, default=1, help="the server's processes (serve --workers)")
    parser.add_argument("--model", help="the server's ONNX model (default: the packaged one)")
    parser.add_argument("--max-batch", type=int, help="the server's most windows per model call")
    parser.add_argument("--read-timeout", type=float, default=10.0, help="the server's --read-timeout")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --calls new calls, one after the other")
    parser.add_argument("--flood", type=int, default=0, help="AudioSocket senders at full speed (hostile)")
    parser.add_argument("--ping-flood", type=int, default=0, help="Media Streams ping floods never reading (hostile)")
    parser.add_argument("--slowloris", type=int, default=0, help="connections sending a byte every 5 s (hostile)")
    parser.add_argument("--dtmf", type=int, default=0, help="DTMF frames sent at once by one more call (hostile)")
    parser.add_argument("--pong-flood", type=int, default=0, help="Media Streams pong floods (hostile)")
    parser.add_argument("--stderr-flood", type=int, default=0, help="refused connections, stderr unread (hostile)")
    parser.add_argument("--client-cpu", type=int, metavar="CORE", help="pin the load test (not the server) to one core")
    parser.add_argument("--bare", action="store_true", help="also time the bare model on the same windows")
    parser.add_argument("--profile", action="store_true", help="the server's CPU by library (perf, while streaming)")
    parser.add_argument("--metrics", action="store_true", help="the server serves --metrics on a loopback port")
    parser.add_argument("--dashboard", action="store_true", help="the server serves --dashboard on a loopback port")
    args = parser.parse_args(argv)
    if not loopback(args.target.rsplit(":", 1)[0]):
        parser.error("--target must be a loopback address (127.0.0.0/8, ::1, localhost)")
    if not 1 <= args.calls <= 2000 or not 0 < args.duration <= 3600:
        parser.error("--calls must be 1..2000 and --duration 0..3600 s")
    wrong = (
        args.protocol == "mediastream"
        if args.flood or args.dtmf
        else (args.ping_flood or args.pong_flood) and args.protocol == "audiosocket"
    )
    if wrong:
        parser.error("--flood and --dtmf need AudioSocket calls, --ping-flood and --pong-flood Media Streams calls")
    if args.protocol == "mixed" and not args.target.endswith(":0"):
        parser.error("--protocol mixed needs a --target with port 0 (each protocol gets its own port)")
    if args.profile and (args.duration < 10 or not shutil.which("perf")):
        parser.error("--profile needs perf (Debian: linux-perf) and --duration of at least 10 s")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        result = asyncio.run(LoadTest(args).run())
    except (OSError, RuntimeError, sf.LibsndfileError, cpu_profile.ProfileError) as exc:
        sys.exit(f"loadtest: {exc}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
