"""`serve --dashboard`: the supervisor's page, served by `serve` itself from a daemon thread (standard library only).

`GET /` is one page (dashboard.html, a package data file: inline HTML, CSS and JS, nothing fetched from
elsewhere); `GET /events` streams what it draws as server-sent events, at most `1 / PERIOD_S` updates a
second however fast calls change, and only when something changed. Read-only: there is nothing to post.

Where the views come from: each server process keeps a `Board` (board.py) on its event loop and publishes
its snapshot, coalesced to one per PERIOD_S, to a `Snapshots` store: in memory for a single process, a file
per worker in one folder for `--workers N`, whose parent serves the page and merges them.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..calls import CallEvent
from .board import Board, merge
from .hub import Sink
from .security import presented_token, same_secret

PERIOD_S = 0.25
"""Least time between two updates of the page (and between two snapshots of a process)."""
KEEPALIVE_S = 15.0
"""An SSE comment this often keeps proxies from closing a quiet stream."""
MAX_STREAMS = 16
"""Pages watching at once; more get 503."""


class Snapshots:
    """The latest snapshot of each server process: `put` from a process, `merged` for the page."""

    def __init__(self, threshold: float, folder: Path | None = None) -> None:
        self.threshold = threshold  # the meters mark it
        self.folder = folder  # None: one process, kept in memory
        self._latest: dict[str, Any] | None = None
        self._merged: tuple[float, bytes] = (0.0, b"")
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, threshold: float) -> Snapshots:
        """A store for several processes: files in a fresh folder (remove it with `cleanup`)."""
        return cls(threshold, Path(tempfile.mkdtemp(prefix="anger-stream-dashboard-")))

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def put(self, snapshot: dict[str, Any], worker: int | None) -> None:
        if self.folder is None:
            self._latest = snapshot  # one reference, replaced whole: safe to read from another thread
            return
        path = self.folder / f"worker-{worker}.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(snapshot, separators=(",", ":")))
        os.replace(partial, path)

    def _read(self) -> list[dict[str, Any]]:
        if self.folder is None:
            return [self._latest] if self._latest is not None else []
        out = []
        for path in sorted(self.folder.glob("worker-*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # replaced while being read: the next update has it
                continue
        return out

    def merged(self) -> bytes:
        """The page's data as JSON, computed at most once per PERIOD_S whatever the number of pages."""
        with self._lock:
            at, data = self._merged
            if time.monotonic() - at >= PERIOD_S:
                data = json.dumps(merge(self._read(), self.threshold), separators=(",", ":")).encode()
                self._merged = (time.monotonic(), data)
            return data


def publisher(board: Board, store: Snapshots, worker: int | None) -> Sink:
    """A hub sink feeding `board` that puts its snapshot into `store` at most once per PERIOD_S, the last
    change included (a timer on the event loop, none while nothing changes)."""
    pending = False

    def flush() -> None:
        nonlocal pending
        pending = False
        store.put(board.snapshot(), worker)

    def sink(events: list[CallEvent]) -> None:
        nonlocal pending
        board.events(events)
        if not pending:
            pending = True
            asyncio.get_running_loop().call_later(PERIOD_S, flush)

    return sink


def page() -> bytes:
    return resources.files(__package__).joinpath("dashboard.html").read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlsplit(self.path).path
        if path == "/health":  # for a proxy's health check, like the Media Streams listener's
            self._reply(HTTPStatus.OK, b"OK\n")
            return
        if self.server.token is not None:
            token = presented_token(self.path, self.headers)
            if token is None or not same_secret(token, self.server.token):
                self._reply(HTTPStatus.UNAUTHORIZED, b"token required (Authorization: Bearer, or ?token=)\n")
                return
        if path == "/":
            self._reply(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/events":
            self._stream()
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

    def _reply(self, status: HTTPStatus, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", "default-src 'self'; style-src 'unsafe-inline'; "
                         "script-src 'unsafe-inline'; img-src data:")  # fmt: skip
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        """Server-sent events: the page's data whenever it changed, at most once per PERIOD_S."""
        if not self.server.streams.acquire(blocking=False):
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"too many pages open\n")
            return
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
            self.end_headers()
            last, quiet_since = b"", time.monotonic()
            while not self.server.stopping.is_set():
                data = self.server.snapshots.merged()
                if data != last:
                    self.wfile.write(b"data: " + data + b"\n\n")
                    last, quiet_since = data, time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE_S:
                    self.wfile.write(b": keep-alive\n\n")
                    quiet_since = time.monotonic()
                self.wfile.flush()
                time.sleep(PERIOD_S)
        except OSError:  # the page went away
            pass
        finally:
            self.server.streams.release()
            self.close_connection = True


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, snapshots: Snapshots, token: str | None) -> None:
        self.address_family = _family(host)
        super().__init__((host, port), _Handler)
        self.snapshots = snapshots
        self.token = token
        self.page = page()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.stopping = threading.Event()

    def close(self) -> None:
        """Stop serving; the open event streams end within PERIOD_S."""
        self.stopping.set()
        self.shutdown()
        self.server_close()


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve_dashboard(host: str, port: int, snapshots: Snapshots, token: str | None) -> tuple[DashboardServer, int]:
    """Serve the page on host:port from a daemon thread; the server and its port (0 resolved). OSError if it
    cannot listen."""
    server = DashboardServer(host, port, snapshots, token)
    threading.Thread(target=server.serve_forever, name="anger-dashboard", daemon=True).start()
    return server, server.server_address[1]
