"""`serve --metrics`: Prometheus metrics counted from the hub's events and ticks (prometheus-client).

`CallMetrics` is an observer: a sink for the hub's (call id, event) pairs and its `on_tick` hook, both on the
event loop, never called per audio frame. Every server process (each of `--workers N`) counts in
prometheus-client's multiprocess mode, its values in files of one folder (`prepare`, before the workers are
forked), and the endpoint (`serve_endpoint`), run by the process that started the others, adds them up: the
counts are over all workers. Labelled series start at 0 for every known label. The endpoint adds
`anger_stream_build_info` and, as prometheus-client offers them, the process metrics of the process that
serves it (with `--workers N`, the parent: the multiprocess mode cannot add up per-process collectors).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import __version__
from ..calls import CallEvent
from ..events import AngerEnd, AngerStart, Status, Window
from .http_endpoint import BoundedHandler, BoundedHTTPServer
from .hub import FINAL_STATES, Tick

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
ERROR_KINDS = (
    "protocol", "connection_lost", "closed_by_peer", "timeout", "too_slow", "not_reading", "ping_flood",
    "duplicate_call", "bad_format", "asterisk", "internal",
)  # fmt: skip
"""The `error_kind`s of a call's error line (docs/operations.md explains each)."""


def prepare() -> Path:
    """A fresh folder for the values of every process, named in the environment; call it before
    prometheus_client is first imported (the multiprocess mode is chosen then). Remove it with `cleanup`."""
    folder = Path(tempfile.mkdtemp(prefix="anger-stream-metrics-"))
    os.environ[MULTIPROCESS_ENV] = str(folder)
    return folder


def cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


class _BuildInfo:
    """`anger_stream_build_info{version,model} 1`: which release and model a server runs."""

    def __init__(self, model: str) -> None:
        self.model = model

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        info = GaugeMetricFamily("anger_stream_build_info", "The running release and model (always 1).",
                                 labels=("version", "model"))  # fmt: skip
        info.add_metric((__version__, self.model), 1)
        yield info


class _MetricsHandler(BoundedHandler):
    server: MetricsServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        from prometheus_client.exposition import choose_encoder

        if urlsplit(self.path).path != "/metrics":
            body, kind, status = b"not found: try /metrics\n", "text/plain; charset=utf-8", HTTPStatus.NOT_FOUND
        else:
            encoder, kind = choose_encoder(self.headers.get("Accept", ""))
            body, status = encoder(self.server.registry), HTTPStatus.OK
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class MetricsServer(BoundedHTTPServer):
    def __init__(self, host: str, port: int, registry: Any) -> None:
        super().__init__("metrics", host, port, _MetricsHandler)
        self.registry = registry


def serve_endpoint(host: str, port: int, model: str) -> tuple[MetricsServer, int]:
    """Serve the sum over every process's values on http://host:port/metrics from a daemon thread, with the
    build info of `model` and this process's metrics; the server and its port (0 resolved). OSError if it
    cannot listen."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    ProcessCollector(registry=registry)
    registry.register(_BuildInfo(model))
    server = MetricsServer(host, port, registry)
    return server, server.start()


class CallMetrics:
    """The counters of one server process. `events` is a hub sink, `tick` its on_tick hook."""

    def __init__(self, protocols: Iterable[str]) -> None:
        """`protocols`: those served, whose series start at 0."""
        from prometheus_client import Counter, Gauge, Histogram

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(f"anger_stream_{name}", doc, tuple(labels), registry=None)

        self.active = Gauge(
            "anger_stream_calls_active", "Calls being served.", ("protocol",), registry=None,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.angry = Gauge(
            "anger_stream_calls_angry", "Calls angry now (in an anger segment).", registry=None,
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
            "anger_stream_tick_windows",
            "Windows the model scored per tick that scored any (in calls of at most --max-batch).",
            buckets=BATCH_BUCKETS, registry=None,
        )  # fmt: skip
        self.tick_seconds = Histogram(
            "anger_stream_tick_seconds", "Time a tick that scored windows took (the same ticks as tick_windows).",
            buckets=LATENCY_BUCKETS, registry=None,
        )  # fmt: skip
        self.latency = Histogram(
            "anger_stream_window_latency_seconds",
            "From the arrival of the audio that completes a window to its line on stdout.",
            buckets=LATENCY_BUCKETS, registry=None,
        )  # fmt: skip
        self._protocol: dict[str, str] = {}  # the calls being served
        self._angry: set[str] = set()  # those in an anger segment
        for protocol in protocols:
            self.active.labels(protocol)
            self.calls.labels(protocol)
            for kind in ERROR_KINDS:
                self.errors.labels(protocol, kind)
        for result in ("scored", "silent"):
            self.windows.labels(result)
        for outcome in ("sent", "retried", "dropped"):
            self.webhooks.labels(outcome)

    def events(self, events: list[CallEvent]) -> None:
        scored = silent = 0
        for call_id, e in events:
            if isinstance(e, Window):
                silent += e.p is None
                scored += e.p is not None
            elif isinstance(e, AngerStart):
                self.segments.inc()
                if call_id not in self._angry:
                    self._angry.add(call_id)
                    self.angry.inc()
            elif isinstance(e, AngerEnd):
                self._calm(call_id)
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
        self._calm(call_id)
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

    def _calm(self, call_id: str | None) -> None:
        if call_id in self._angry:
            self._angry.discard(call_id)
            self.angry.dec()

    def tick(self, tick: Tick) -> None:
        if tick.windows:  # a tick of silent windows only, or of calls ending, runs no model
            self.tick_windows.observe(tick.windows)
            self.tick_seconds.observe(tick.seconds)
        self.late_ticks.inc(tick.late)
        for latency in tick.latencies:
            self.latency.observe(latency)
