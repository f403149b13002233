"""`serve --metrics`: Prometheus metrics counted from the hub's events and ticks (prometheus-client).

`CallMetrics` is an observer: a sink for the hub's (call id, event) pairs and its `on_tick` hook, both on the
event loop, never called per audio frame. Every server process (each of `--workers N`) counts in
prometheus-client's multiprocess mode, its values in files of one folder (`prepare`, before the workers are
forked), and the endpoint (`serve_endpoint`), run by the process that started the others, adds them up: the
counts are over all workers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ..calls import CallEvent
from ..events import AngerStart, Status, Window
from .hub import FINAL_STATES, Tick

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def prepare() -> Path:
    """A fresh folder for the values of every process, named in the environment; call it before
    prometheus_client is first imported (the multiprocess mode is chosen then). Remove it with `cleanup`."""
    folder = Path(tempfile.mkdtemp(prefix="anger-stream-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(folder)
    return folder


def cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def serve_endpoint(host: str, port: int) -> tuple[str, int]:
    """Serve the sum over every process's values on http://host:port/metrics from a daemon thread; where it
    listens (port 0 resolved). OSError if it cannot listen."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    httpd, _ = start_http_server(port, host, registry)
    return str(httpd.server_address[0]), int(httpd.server_address[1])


class CallMetrics:
    """The counters of one server process. `events` is a hub sink, `tick` its on_tick hook."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"anger_stream_{name}", doc, tuple(labels), registry=None)

        self.active = Gauge(
            "anger_stream_calls_active", "Calls being served.", ("protocol",), registry=None,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.calls = counter("calls", "Calls started.", ("protocol",))
        self.errors = counter("call_errors", "Calls that ended in an error, by error_kind.", ("protocol", "kind"))
        self.windows = counter("windows", "Window lines: scored, or silent (below --min-dbfs).", ("result",))
        self.segments = counter("anger_segments", "Anger segments started (anger_start lines).")
        self.dtmf_dropped = counter("dtmf_dropped", "DTMF digits dropped: more than a keypad can send.")
        self.late_ticks = counter("late_ticks", "Ticks that took longer than a hop: lines fall behind the audio.")
        self.webhooks = counter(
            "webhook_posts", "Webhook bodies sent, retried (an attempt failed) or dropped (queue full, refused, given "
            "up, or left at shutdown).", ("outcome",),
        )  # fmt: skip
        self.tick_windows = Histogram(
            "anger_stream_tick_windows", "Windows the model scored per tick (in calls of at most --max-batch).",
            buckets=BATCH_BUCKETS, registry=None,
        )  # fmt: skip
        self.tick_seconds = Histogram(
            "anger_stream_tick_seconds", "Time the model took per tick.", buckets=LATENCY_BUCKETS, registry=None
        )
        self.latency = Histogram(
            "anger_stream_window_latency_seconds",
            "From the arrival of the audio that completes a window to its line on stdout.",
            buckets=LATENCY_BUCKETS, registry=None,
        )  # fmt: skip
        self._protocol: dict[str, str] = {}  # the calls being served

    def events(self, events: list[CallEvent]) -> None:
        scored = silent = 0
        for call_id, e in events:
            if isinstance(e, Window):
                silent += e.p is None
                scored += e.p is not None
            elif isinstance(e, AngerStart):
                self.segments.inc()
            elif isinstance(e, Status) and call_id is not None:
                self._status(call_id, e)
        if scored:
            self.windows.labels("scored").inc(scored)
        if silent:
            self.windows.labels("silent").inc(silent)

    def _status(self, call_id: str, status: Status) -> None:
        if status.state == "start":
            protocol = self._protocol[call_id] = str(status.info.get("protocol", ""))
            self.calls.labels(protocol).inc()
            self.active.labels(protocol).inc()
            return
        if status.state not in FINAL_STATES:
            return
        protocol = self._protocol.pop(call_id, None)
        if protocol is not None:
            self.active.labels(protocol).dec()
        if status.state == "error":
            kind = status.info.get("error_kind", "internal")
            self.errors.labels(protocol or status.info.get("protocol", ""), kind).inc()
        if dropped := status.info.get("dtmf_dropped"):
            self.dtmf_dropped.inc(dropped)

    def webhook(self, outcome: str) -> None:
        """A webhook sender's outcome (on its own thread): "sent", "retried" or "dropped"."""
        self.webhooks.labels(outcome).inc()

    def tick(self, tick: Tick) -> None:
        if tick.windows:
            self.tick_windows.observe(tick.windows)
        self.tick_seconds.observe(tick.seconds)
        self.late_ticks.inc(tick.late)
        for latency in tick.latencies:
            self.latency.observe(latency)
