"""`serve --dashboard`: the supervisor's page, served by `serve` itself from a daemon thread (standard library only).

`GET /` is one page (dashboard.html, a package data file: inline HTML, CSS and JS, nothing fetched from
elsewhere); `GET /events` streams what it draws as server-sent events, at most `1 / PERIOD_S` updates a
second however fast calls change, and only when something changed, and a `ping` event every PING_S so the
page knows the stream is alive. With a token, a request presents it (`Authorization: Bearer`) or the cookie
that `POST /login` (the sign-in form a browser gets with its 401) sets; the only thing to post is that form.
Served by `BoundedHTTPServer` (http_endpoint.py): idle, slow and surplus clients are cut off.

Where the views come from: each server process keeps a `Board` (board.py) on its event loop and publishes
its snapshot, coalesced to one per PERIOD_S, to a `Snapshots` store: in memory for a single process, a file
per worker in one folder for `--workers N`, whose parent serves the page and merges them.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import shutil
import tempfile
import threading
import time
from http import HTTPStatus
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ..calls import CallEvent
from ..config import DetectorConfig
from .board import Board, merge
from .http_endpoint import BoundedHandler, BoundedHTTPServer, peer_gone
from .hub import Sink
from .security import same_secret, session_cookie, signed_in

PERIOD_S = 0.25
"""Least time between two updates of the page (and between two snapshots of a process)."""
PING_S = 0.5
"""A quiet stream sends a `ping` event this often: the page takes 2 s without any as a dead stream (a hung
server, a network gone without a word), and proxies keep the stream open."""
MAX_STREAMS = 16
"""Pages watching at once; more get 503."""
MAX_FORM = 4096
"""Largest sign-in form accepted (bytes)."""
REALM = 'Bearer realm="anger-stream dashboard"'
CSP = (
    "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'"
)
"""The page fetches nothing from elsewhere and cannot be framed."""


class Snapshots:
    """The latest snapshot of each server process: `put` from a process, `merged` for the page."""

    def __init__(self, config: DetectorConfig, folder: Path | None = None) -> None:
        self.config = config  # the page shows the rule that makes a call angry
        self.folder = folder  # None: one process, kept in memory
        self._latest: dict[str, Any] | None = None
        self._merged: tuple[float, bytes] = (0.0, b"")
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, config: DetectorConfig) -> Snapshots:
        """A store for several processes: files in a fresh folder (remove it with `cleanup`)."""
        return cls(config, Path(tempfile.mkdtemp(prefix="anger-stream-dashboard-")))

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
                data = json.dumps(merge(self._read(), self.config, time.time()), separators=(",", ":")).encode()
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


SIGN_IN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>anger-stream: sign in</title>
<style>body {{ font: 15px/1.4 system-ui, sans-serif; background: #f6f7f9; color: #1d2330; display: grid;
place-items: center; min-height: 90vh; margin: 0 }} form {{ background: #fff; border: 1px solid #dde1e8;
border-radius: 6px; padding: 20px 24px; width: 22em }} h1 {{ font-size: 18px; margin: 0 0 12px }}
input {{ width: 100%; font: inherit; padding: 6px 8px; margin: 6px 0 12px }} p.error {{ color: #c62828 }}
</style></head><body><form method="post" action="login"><h1>anger-stream &middot; live calls</h1>
<p class="error">{error}</p><label for="token">Token (<code>--token</code> of <code>anger-stream serve</code>)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button></form></body></html>
"""


class _Handler(BoundedHandler):
    server: DashboardServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        url = urlsplit(self.path)
        if url.path == "/health":  # for a proxy's health check, like the Media Streams listener's
            self._reply(HTTPStatus.OK, b"OK\n")
            return
        token = self.server.token
        if token is not None and not signed_in(self.path, self.headers, token):
            self._sign_in(url.path, "" if "token" not in parse_qs(url.query) else "Wrong token.")
            return
        if token is not None and url.path == "/" and "token" in parse_qs(url.query):
            self._signed_in(token)  # the secret leaves the address bar for a cookie
        elif url.path == "/":
            self._reply(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif url.path == "/events":
            self._stream()
        else:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")

    def do_POST(self) -> None:  # noqa: N802
        """The sign-in form: the token in, the page's cookie out."""
        token = self.server.token
        if urlsplit(self.path).path != "/login" or token is None:
            self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_FORM:
            self._reply(HTTPStatus.BAD_REQUEST, b"expected a sign-in form\n")
            return
        form = parse_qs(self.rfile.read(int(length)).decode("utf-8", "replace"))
        if same_secret(form.get("token", [""])[0], token):
            self._signed_in(token)
        else:
            self._sign_in("/", "Wrong token.")

    def _sign_in(self, path: str, error: str) -> None:
        """401 with WWW-Authenticate; for the page, a sign-in form (a browser sends no Authorization header)."""
        if path == "/":
            body = SIGN_IN.format(error=html.escape(error)).encode()
            self._reply(HTTPStatus.UNAUTHORIZED, body, "text/html; charset=utf-8", {"WWW-Authenticate": REALM})
        else:
            body = b"token required (Authorization: Bearer, or sign in on the page)\n"
            self._reply(HTTPStatus.UNAUTHORIZED, body, headers={"WWW-Authenticate": REALM})

    def _signed_in(self, token: str) -> None:
        behind_tls = self.headers.get("X-Forwarded-Proto", "").lower() == "https"
        cookie = session_cookie(token, secure=behind_tls)
        self._reply(HTTPStatus.SEE_OTHER, b"", headers={"Location": "./", "Set-Cookie": cookie})

    def _reply(
        self,
        status: HTTPStatus,
        body: bytes,
        kind: str = "text/plain; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self._common_headers()
        self.end_headers()
        self.wfile.write(body)

    def _common_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CSP)

    def _stream(self) -> None:
        """Server-sent events: the page's data whenever it changed, at most once per PERIOD_S, each with the
        server's time (`sent`); a `ping` when quiet. Ends within PERIOD_S of the page going away."""
        if not self.server.streams.acquire(blocking=False):
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"too many pages open\n", headers={"Retry-After": "2"})
            return
        try:
            self.server.streaming(self.connection)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
            self._common_headers()
            self.end_headers()
            last, quiet_since = b"", 0.0
            while not self.server.stopping.is_set():
                data = self.server.snapshots.merged()
                if data != last:
                    self.wfile.write(b'data: {"sent":%.3f,' % time.time() + data[1:] + b"\n\n")
                    last, quiet_since = data, time.monotonic()
                elif time.monotonic() - quiet_since >= PING_S:
                    self.wfile.write(b"event: ping\ndata: %.3f\n\n" % time.time())
                    quiet_since = time.monotonic()
                self.wfile.flush()
                if peer_gone(self.connection, PERIOD_S):
                    break
        except OSError:  # the page went away
            pass
        finally:
            self.server.streams.release()


class DashboardServer(BoundedHTTPServer):
    def __init__(self, host: str, port: int, snapshots: Snapshots, token: str | None) -> None:
        super().__init__("dashboard", host, port, _Handler)
        self.snapshots = snapshots
        self.token = token
        self.page = page()
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.stopping = threading.Event()

    def close(self) -> None:
        """Stop serving; the open event streams end within PERIOD_S."""
        self.stopping.set()
        super().close()


def serve_dashboard(host: str, port: int, snapshots: Snapshots, token: str | None) -> tuple[DashboardServer, int]:
    """Serve the page on host:port from a daemon thread; the server and its port (0 resolved). OSError if it
    cannot listen."""
    server = DashboardServer(host, port, snapshots, token)
    return server, server.start()
