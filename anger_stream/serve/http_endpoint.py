"""The HTTP side of `serve` (`--dashboard`, `--metrics`): a threaded HTTP server with bounds, so that idle, slow
or many clients cannot take the descriptors and threads the calls need (standard library only).

- At most MAX_CONNECTIONS connections at once, one thread each; more are answered 503 and closed at once
  (said on stderr at most once a minute).
- One request per connection. Its request, headers and body must arrive (and a plain reply be read) within
  REQUEST_S in all; a stream (`streaming`) is exempt, but every read or write waits at most IO_TIMEOUT_S.
- When accept() fails for lack of descriptors or memory, the server waits ACCEPT_BACKOFF_S before trying
  again (no busy loop) and says so once per episode on stderr, and once more when it accepts again.
- Errors in a handler are one line on stderr (a client that went away, none), never a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .hub import log

MAX_CONNECTIONS = 64
"""Connections served at once per endpoint; beyond, 503 (each holds a thread and a descriptor)."""
REQUEST_S = 5.0
"""Longest a connection may take to send its request and read a plain reply."""
IO_TIMEOUT_S = 5.0
"""Longest one read or write on a connection may wait."""
ACCEPT_BACKOFF_S = 0.5
"""Pause before accepting again after accept() ran out of descriptors or memory."""
REFUSAL_LOG_S = 60.0
"""Least time between two lines saying that connections are refused."""
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"


class BoundedHandler(BaseHTTPRequestHandler):
    """A request handler for `BoundedHTTPServer`: one request per connection, timed reads and writes, no
    access log."""

    server: BoundedHTTPServer
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT_S

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:  # no access log (a URL may hold a secret)
        pass


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with the bounds of this module; `name` labels its log lines."""

    daemon_threads = True
    block_on_close = False  # close() does not wait for the clients' threads
    request_queue_size = 128  # the listen backlog: a burst of connections waits to be accepted or refused

    def __init__(self, name: str, host: str, port: int, handler: type[BoundedHandler]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.name = name
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._deadlines: dict[socket.socket, float] = {}
        self._lock = threading.Lock()
        self._accept_failing = False
        self._refusal_logged = -REFUSAL_LOG_S
        super().__init__((host, port), handler)

    def start(self) -> int:
        """Serve from a daemon thread; the port listened on."""
        threading.Thread(target=self.serve_forever, name=f"anger-{self.name}", daemon=True).start()
        return int(self.server_address[1])

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            request = super().get_request()
        except OSError as exc:
            if exc.errno in OUT_OF_RESOURCES:
                if not self._accept_failing:
                    self._accept_failing = True
                    log(f"{self.name}: cannot accept connections ({exc.strerror}); retrying every "
                        f"{ACCEPT_BACKOFF_S:g} s")  # fmt: skip
                time.sleep(ACCEPT_BACKOFF_S)
            raise
        if self._accept_failing:
            self._accept_failing = False
            log(f"{self.name}: accepting connections again")
        return request

    def process_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            if time.monotonic() - self._refusal_logged >= REFUSAL_LOG_S:
                self._refusal_logged = time.monotonic()
                log(f"{self.name}: {MAX_CONNECTIONS} connections open; refusing more (503)")
            return
        with self._lock:
            self._deadlines[request] = time.monotonic() + REQUEST_S
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had
            self._done(request)
            _refuse(request)

    def process_request_thread(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._lock:
            self._deadlines.pop(request, None)
        self._slots.release()

    def streaming(self, request: socket.socket) -> None:
        """`request` is a long stream from now on: no deadline, only the timeout of each read or write."""
        with self._lock:
            self._deadlines.pop(request, None)

    def service_actions(self) -> None:
        """Twice a second (serve_forever's poll): cut the connections past their deadline."""
        now = time.monotonic()
        with self._lock:
            late = [request for request, deadline in self._deadlines.items() if deadline < now]
            for request in late:
                del self._deadlines[request]
        for request in late:
            with contextlib.suppress(OSError):
                request.shutdown(socket.SHUT_RDWR)  # its thread's read or write returns, and it ends

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):  # a client going away is no error of ours
            log(f"{self.name}: {type(exc).__name__}: {exc}")


def _refuse(request: socket.socket) -> None:
    """503 without waiting, then close."""
    try:
        request.setblocking(False)
        request.send(BUSY)
    except OSError:
        pass
    request.close()


def peer_gone(connection: socket.socket, wait: float) -> bool:
    """Wait up to `wait` seconds for the client to close or reset its side; whether it did (what it sends in
    the meantime is read and dropped)."""
    poll = select.poll()  # not select(): descriptors may be above FD_SETSIZE
    poll.register(connection, select.POLLIN)
    if not poll.poll(wait * 1000):
        return False
    try:
        return connection.recv(4096, socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
