"""Soak test for `anger-stream serve`: calls joining and leaving for many minutes, the server's health each minute.

    python -m tools.soak --minutes 60 --calls 200 --call-seconds 60 --file call.wav --workers 2 --model int8

Starts the server as the load test does (tools/loadtest.py: loopback, both AudioSocket and Media Streams, the
calls alternating between them), then keeps --calls calls going: each streams --call-seconds of the file in
real time (20 ms frames) and hangs up, and a new call joins every call-seconds / calls seconds, so calls start
and end all the time. Every minute one JSON line on stdout: the server's resident memory (all its processes),
open file descriptors, calls streaming, windows lost (expected minus received, of the calls that ended that
minute), p99 latency of the window lines, the load test's own late 20 ms ticks, the server's CPU. At the end a
summary line: the memory's slope after the first --warm-up minutes (MB and % per hour), the file
descriptors' range after it, and the totals.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

from anger_stream.serve.hub import FINAL_STATES
from tools import cpu_profile, loadtest
from tools.loadtest import FRAME_S, Call, LoadTest, _cpu_seconds, _rss_mb

WARM_UP_MIN = 5.0


def _own_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def open_fds(pid: int) -> int:
    """File descriptors open in a process and its children (serve --workers); 0 once it is gone."""
    return sum(_own_fds(p) for p in cpu_profile.process_tree(pid))


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.load = LoadTest(args)  # the server's command line, frames and sending, as in the load test
        self.calls: dict[str, Call] = {}  # streaming or waiting for their final status
        self.streaming: list[Call] = []
        self.tick = 0
        self.stopping = False  # no more calls join
        self.minute: dict = self._blank()
        self.minutes: list[dict] = []
        self.totals = {"calls_started": 0, "calls_completed": 0, "calls_failed": 0, "windows_expected": 0}
        self.totals |= {"windows_received": 0, "frames_dropped": 0, "late_ticks": 0}

    @staticmethod
    def _blank() -> dict:
        return {"latencies": [], "ended": 0, "failed": 0, "expected": 0, "received": 0, "late_ticks": 0}

    async def run(self) -> dict:
        a = self.args
        proc, ports = await self.load.start_server()
        if a.client_cpu is not None:
            os.sched_setaffinity(0, {a.client_cpu})
        reader = asyncio.create_task(self.read_events(proc))
        every = max(round(a.call_seconds / a.calls / FRAME_S), 1)  # ticks between two calls joining
        t0, cpu0, stop = time.monotonic(), _cpu_seconds(proc.pid), time.monotonic() + 60 * a.minutes
        next_minute, cpu_minute = t0 + 60, cpu0
        joining: set[asyncio.Task] = set()
        try:
            while time.monotonic() < stop and proc.returncode is None:
                due = t0 + self.tick * FRAME_S
                await asyncio.sleep(max(due - time.monotonic(), 0.0))
                self.minute["late_ticks"] += time.monotonic() - due > FRAME_S
                if self.tick % every == 0:
                    task = asyncio.create_task(self.join(ports))
                    joining.add(task)
                    task.add_done_callback(joining.discard)
                self.send()
                self.tick += 1
                if time.monotonic() >= next_minute:
                    cpu = _cpu_seconds(proc.pid)
                    self.report(proc.pid, time.monotonic() - t0, cpu - cpu_minute)
                    next_minute, cpu_minute = next_minute + 60, cpu
            self.stopping = True
            await asyncio.gather(*joining)
            while self.streaming:  # the calls under way finish; no new ones
                await asyncio.sleep(max(t0 + self.tick * FRAME_S - time.monotonic(), 0.0))
                self.send()
                self.tick += 1
            try:
                await asyncio.wait_for(reader, 60)
            except TimeoutError:
                print("soak: some calls never reported their end", file=sys.stderr)
            self.report(proc.pid, time.monotonic() - t0, _cpu_seconds(proc.pid) - cpu_minute)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
            reader.cancel()
        return self.summary(time.monotonic() - t0)

    async def join(self, ports: dict[str, int]) -> None:
        """A new call: connected now, streaming from the next tick."""
        protocol = ("audiosocket", "mediastream")[self.totals["calls_started"] % 2]
        self.totals["calls_started"] += 1
        call = Call(str(uuid.uuid4()), 0, np.zeros(self.load.n_frames), protocol=protocol)
        self.calls[call.call_id] = call
        try:
            await self.load.connect(ports, call)
        except (OSError, TimeoutError) as exc:
            print(f"soak: call {call.call_id} could not connect: {exc}", file=sys.stderr)
            call.final = {"state": "error"}
            self.settle(call)
            return
        call.start_frame = self.tick + 1
        self.streaming.append(call)

    def send(self) -> None:
        """This tick's frame of every streaming call."""
        for call in self.streaming:
            k = self.tick - call.start_frame
            if 0 <= k < self.load.n_frames:
                call.sent_at[k] = time.monotonic()
                self.load.send_frame(call, k)
        self.streaming = [c for c in self.streaming if self.tick - c.start_frame < self.load.n_frames - 1]

    async def read_events(self, proc: asyncio.subprocess.Process) -> None:
        """The server's lines: window latencies, final statuses (a call is counted and forgotten at its end)."""
        samples = len(self.load.samples)
        while not (self.stopping and not self.calls):
            line = await proc.stdout.readline()
            now = time.monotonic()
            if not line:
                return
            msg = json.loads(line)
            call = self.calls.get(msg.get("call"))
            if call is None:
                continue
            if msg["type"] == "window":
                self.minute["latencies"].append(call.window_line(msg["t_end"], now, samples))
            elif msg["type"] == "status" and msg["state"] in FINAL_STATES:
                call.final = msg
                self.settle(call)

    def settle(self, call: Call) -> None:
        m = self.minute
        m["ended"] += 1
        m["failed"] += call.final["state"] != "end"
        m["expected"] += self.load.expected_windows
        m["received"] += call.windows
        self.totals["frames_dropped"] += call.failed
        self.calls.pop(call.call_id, None)

    def report(self, pid: int, elapsed: float, cpu: float) -> None:
        """One minute's line (stdout), its figures kept for the summary."""
        m, self.minute = self.minute, self._blank()
        lat = np.array(m["latencies"]) * 1000
        row = {
            "minute": round(elapsed / 60, 2),
            "server_rss_mb": _rss_mb(pid),
            "server_fds": open_fds(pid),
            "calls_streaming": len(self.streaming),
            "calls_ended": m["ended"],
            "calls_failed": m["failed"],
            "windows_lost": m["expected"] - m["received"],
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "client_late_ticks": m["late_ticks"],
            "server_cpu_percent": round(100 * cpu / 60, 1),
            "load_average": round(os.getloadavg()[0], 2),
        }
        t = self.totals
        t["calls_completed"] += m["ended"] - m["failed"]
        t["calls_failed"] += m["failed"]
        t["windows_expected"] += m["expected"]
        t["windows_received"] += m["received"]
        t["late_ticks"] += m["late_ticks"]
        self.minutes.append(row | {"_p99": lat})
        print(json.dumps(row), flush=True)

    def summary(self, elapsed: float) -> dict:
        after = [r for r in self.minutes if r["minute"] > self.args.warm_up and r["server_rss_mb"]]
        slope = None
        if len(after) >= 3:
            t, mb = np.array([(r["minute"], r["server_rss_mb"]) for r in after]).T
            per_hour = float(np.polyfit(t, mb, 1)[0]) * 60
            slope = {"mb_per_hour": round(per_hour, 2), "percent_per_hour": round(100 * per_hour / mb[0], 2)}
        lat = np.concatenate([r["_p99"] for r in self.minutes]) if self.minutes else np.zeros(0)
        return {
            "summary": True,
            "minutes": round(elapsed / 60, 2),
            "calls": self.args.calls,
            "call_seconds": self.args.call_seconds,
            **self.totals,
            "windows_lost": self.totals["windows_expected"] - self.totals["windows_received"],
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
            "rss_after_warm_up_mb": after[0]["server_rss_mb"] if after else None,
            "rss_slope_after_warm_up": slope,
            "fds_after_warm_up": [min(r["server_fds"] for r in after), max(r["server_fds"] for r in after)]
            if after
            else None,
            "worst_minute_p99_ms": max((r["p99_ms"] or 0 for r in self.minutes), default=None),
        }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The soak's options, checked (a usage error exits); the server's are the load test's."""
    parser = argparse.ArgumentParser(prog="python -m tools.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0, help="how long new calls keep joining")
    parser.add_argument("--calls", type=int, default=100, help="calls streaming at once")
    parser.add_argument("--call-seconds", type=float, default=60.0, help="length of each call (the file loops)")
    parser.add_argument("--file", type=Path, required=True, help="a recorded call (any rate; mixed to mono)")
    parser.add_argument("--workers", type=int, default=2, help="the server's processes (serve --workers)")
    parser.add_argument("--threads", type=int, default=2, help="the server's scoring threads (per worker)")
    parser.add_argument("--model", help="the server's ONNX model (default: the packaged one)")
    parser.add_argument("--warm-up", type=float, default=WARM_UP_MIN, help="minutes left out of the memory slope")
    parser.add_argument(
        "--client-cpu", type=int, metavar="CORE", help="pin the soak client (not the server) to one core"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.calls <= 2000 or not 1 <= args.call_seconds <= 3600 or args.minutes <= 0:
        parser.error("--calls must be 1..2000, --call-seconds 1..3600 and --minutes above 0")
    server = ["--protocol", "mixed", "--file", str(args.file), "--duration", str(args.call_seconds), "--ramp", "0"]
    server += ["--workers", str(args.workers), "--threads", str(args.threads)]
    server += ["--model", args.model] if args.model else []
    return argparse.Namespace(**{**vars(loadtest.parse(server)), **vars(args)})  # the load test's own defaults


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    try:
        result = asyncio.run(Soak(args).run())
    except (OSError, RuntimeError, sf.LibsndfileError) as exc:
        sys.exit(f"soak: {exc}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
