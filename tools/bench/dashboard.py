"""What `serve --metrics` and `serve --dashboard` cost the server under load: the same load test side by side
without either, with metrics, with the dashboard and no page, and with the dashboard and one page open in a
headless Chromium (the system's), in turns, so that the machine's noise falls on every mode alike.

    python -m tools.bench dashboard --file call.wav --calls 300 --duration 20 --workers 2 --model int8 \
        --rounds 2 --json docs/dashboard-cpu.jsonl

One JSON line per run (mode, round, the load test's summary: server CPU, p99 latency, windows; for the page,
its updates, the updates per second and the longest render, and the browser's CPU), then a summary per mode
on stderr. Bounded: rounds x 4 runs of --duration seconds plus start-up each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

from tools.browser import Chromium, chromium_path
from tools.loadtest import LoadTest, _cpu_seconds
from tools.loadtest import parse as loadtest_options

MODES = ("plain", "metrics", "dashboard", "page")
"""plain: no endpoint; metrics: --metrics; dashboard: --dashboard, nobody watching; page: one page open."""


def run(mode: str, args: argparse.Namespace) -> dict:
    options = ["--file", str(args.file), "--calls", str(args.calls), "--duration", str(args.duration)]
    options += ["--workers", str(args.workers), "--ramp", str(args.ramp)]
    options += ["--model", args.model] if args.model else []
    options += {"metrics": ["--metrics"], "dashboard": ["--dashboard"], "page": ["--dashboard"]}.get(mode, [])
    test = LoadTest(loadtest_options(options))
    browser: Chromium | None = None
    opened = {}

    def open_page(ports: dict[str, int]) -> None:
        nonlocal browser
        browser = Chromium()
        browser.open(f"http://127.0.0.1:{ports['dashboard']}/")
        opened.update(at=time.monotonic(), cpu=_cpu_seconds(browser.pid))

    if mode == "page":
        test.on_started = open_page
    try:
        summary = asyncio.run(test.run())
        if browser is not None:
            seconds = time.monotonic() - opened["at"]
            stats = browser.evaluate("window.dashboardStats")
            summary["page"] = {
                "updates": stats["updates"],
                "updates_per_s": round(stats["updates"] / seconds, 2),
                "render_ms_mean": round(stats["renderMsTotal"] / max(stats["updates"], 1), 2),
                "render_ms_max": round(stats["renderMsMax"], 1),
                "browser_cpu_percent": round(100 * (_cpu_seconds(browser.pid) - opened["cpu"]) / seconds, 1),
            }
    finally:
        if browser is not None:
            browser.close()
    return summary


def observer_cost(calls: int, seconds: float = 20.0) -> dict[str, float]:
    """CPU (% of one core) that `CallMetrics` and a dashboard `Board` with its snapshots (one file store, as
    a worker under --workers) spend on the events of `calls` calls, replayed in-process as the hub hands
    them over: a window per call every hop (one in eight angry), a tick every 10 ms, a snapshot every PERIOD_S.
    The lines cost nothing here: only the observers are timed."""
    import os
    import shutil
    import tempfile

    values = tempfile.mkdtemp(prefix="anger-stream-bench-")  # the metrics' multiprocess values
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", values)
    from anger_stream.config import DetectorConfig
    from anger_stream.events import AngerEnd, AngerStart, Status, Window
    from anger_stream.serve.board import Board, merge
    from anger_stream.serve.dashboard import PERIOD_S, Snapshots
    from anger_stream.serve.hub import Tick
    from anger_stream.serve.prometheus import CallMetrics

    tick_s, hop = 0.01, 0.6
    ids = [f"call-{i}" for i in range(calls)]
    starts = [(c, Status("start", 0.0, {"protocol": "audiosocket", "peer": "127.0.0.1:5000"})) for c in ids]
    ticks = []  # the hub's batches: each call's window falls in one tick of every hop
    for k in range(round(seconds / tick_s)):
        t, batch = k * tick_s, []
        for i, c in enumerate(ids):
            if (k - i) % round(hop / tick_s) == 0:
                n = (k - i) // round(hop / tick_s)
                angry = n % 8 == 4
                batch.append((c, Window(t - 1.2, t, 0.8 if angry else 0.2, angry, -20.0)))
                if angry:
                    batch.append((c, AngerStart(t, 0.8, t - 1.2)))
                elif n % 8 == 5:
                    batch.append((c, AngerEnd(t, 0.6, 0.8)))
        ticks.append(batch)
    out = {}
    metrics = CallMetrics(["audiosocket"])
    metrics.events(starts)
    started = time.process_time()
    for batch in ticks:
        metrics.events(batch)
        metrics.tick(Tick(len(batch), 0.005, False, tuple(0.02 for _ in batch)))
    out["metrics_cpu_percent"] = round(100 * (time.process_time() - started) / seconds, 2)
    config = DetectorConfig()
    board, store = Board(), Snapshots.shared(config)
    board.events(starts)
    every = round(PERIOD_S / tick_s)
    started = time.process_time()
    for k, batch in enumerate(ticks):
        board.events(batch)
        if k % every == 0:
            store.put(board.snapshot(), 0)
    out["board_cpu_percent"] = round(100 * (time.process_time() - started) / seconds, 2)
    started = time.process_time()
    for _ in range(round(seconds / PERIOD_S)):  # the parent's side while a page is open: read, merge, encode
        snapshots = [json.loads(path.read_text()) for path in store.folder.glob("worker-*.json")]
        json.dumps(merge(snapshots, config, time.time()), separators=(",", ":"))
    out["merge_cpu_percent"] = round(100 * (time.process_time() - started) / seconds, 2)
    store.cleanup()
    shutil.rmtree(values, ignore_errors=True)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", type=Path, required=True, help="a recorded call (any rate), looped")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per call")
    parser.add_argument("--ramp", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", help="the server's model (e.g. int8)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of all four modes")
    parser.add_argument("--json", type=Path, help="append the runs to this JSON-lines file")


def run_report(args: argparse.Namespace, command: str) -> None:
    """Every mode in turns, one JSON line per run on stdout, then the summary per mode on stderr."""
    if not 1 <= args.rounds <= 10 or not 0 < args.duration <= 120:
        sys.exit("error: --rounds must be 1..10 and --duration 0..120 s (a bounded benchmark)")
    if chromium_path() is None:
        sys.exit("error: the dashboard report needs Chromium (Debian: apt-get install chromium)")
    cost = {"mode": "observers", "calls": args.calls, **observer_cost(args.calls)}
    print(json.dumps(cost), flush=True)
    print(f"observers: {cost}", file=sys.stderr)
    runs = []
    for r in range(args.rounds):
        for mode in MODES:
            summary = run(mode, args)
            line = {"mode": mode, "round": r, "calls": args.calls, "workers": args.workers, **summary}
            runs.append(line)
            print(json.dumps(line), flush=True)
    if args.json:
        with args.json.open("a") as out:
            for line in [cost, *runs]:
                out.write(json.dumps(line) + "\n")
    for mode in MODES:
        mine = [x for x in runs if x["mode"] == mode]
        cpu = statistics.median(x["server_cpu_percent"] for x in mine)
        parent = statistics.median(x["server_parent_cpu_percent"] or 0.0 for x in mine)
        p99 = statistics.median(x["latency_ms"]["p99"] for x in mine)
        page = f", page {mine[-1]['page']}" if "page" in mine[-1] else ""
        print(f"{mode:>9}: server CPU {cpu:.1f} % (its parent {parent:.2f} %; median of {len(mine)}), "
              f"p99 {p99:.0f} ms{page}", file=sys.stderr)  # fmt: skip
