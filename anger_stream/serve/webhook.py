"""`serve --webhook URL`: anger events POSTed to the IVR, signed, from a bounded queue on a thread of its own.

`Webhooks` is a hub sink (on the event loop): each `anger_start` and `anger_end`, and the final status of a
call that had one, becomes a JSON body with an event id, put on each URL's `Sender` queue. Putting never
blocks and never waits on the network: a `Sender` thread POSTs the bodies in order, retrying a failed one
(no answer, 408, 429, 5xx) with exponential backoff; when its queue is full the oldest body is dropped and
counted, as is one whose retries run out, one the receiver refuses (another 4xx), and what is left when the
server stops and the queue does not drain within FLUSH_S. A retried POST may arrive twice (the receiver got
it, its answer did not come back): the event id in the body and the header lets the receiver keep one.

Each POST is signed: `X-Anger-Signature: sha256=<hex>`, the HMAC-SHA256 keyed with the shared secret of
`<X-Anger-Timestamp>.<body>`; the receiver checks it with `verify` and refuses old timestamps (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ..calls import CallEvent, line_fields
from ..events import AngerEnd, AngerStart, Status
from .hub import FINAL_STATES
from .security import WEBHOOK_SECRET_ENV

MIN_SECRET = 16
"""Shortest secret accepted (characters); `openssl rand -hex 32` makes a good one."""
SIGNATURE_HEADER = "X-Anger-Signature"
TIMESTAMP_HEADER = "X-Anger-Timestamp"
EVENT_ID_HEADER = "X-Anger-Event-Id"
TOLERANCE_S = 300
"""How old a timestamp `verify` accepts (seconds, either way): a captured request cannot be replayed later."""
MAX_QUEUE = 1000
"""Bodies waiting per URL; beyond it the oldest is dropped."""
ATTEMPTS = 5
"""POSTs of one body before it is dropped."""
BACKOFF_S = 0.5
"""Wait before the first retry, doubled for each next one (0.5, 1, 2, 4 s)."""
TIMEOUT_S = 5.0
"""Per POST, to connect and to get the answer."""
FLUSH_S = 5.0
"""At shutdown, how long the queues may take to drain before what is left is dropped."""
OUTCOMES = ("sent", "retried", "dropped")


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """What a receiver checks: the signature matches the body and timestamp, and the timestamp is recent."""
    timestamp, signature = headers.get(TIMESTAMP_HEADER, ""), headers.get(SIGNATURE_HEADER, "")
    if not timestamp.isdigit() or abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def check_url(url: str) -> str:
    """The URL if it is http(s) with a host; ValueError with a clear message otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--webhook needs an http:// or https:// URL with a host, got {shown(url)!r}")
    return url


def shown(url: str) -> str:
    """A URL as lines and logs show it: without query or credentials (they may hold a secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def check_secret(secret: str) -> bytes:
    secret = secret.strip()
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the webhook secret must have at least {MIN_SECRET} characters (e.g. `openssl rand -hex 32`)")
    return secret.encode()


class Sender:
    """One URL's queue and the thread that POSTs it. `put` from any thread; `close` once, at the end."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        on_outcome: Callable[[str], None] | None = None,
        max_queue: int = MAX_QUEUE,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.url, self._secret, self._on_outcome = url, secret, on_outcome
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._max_queue = max_queue
        self._lock = threading.Condition()
        self._deadline: float | None = None  # set by `close`: deliver until then
        self._thread = threading.Thread(target=self._run, name="anger-webhook", daemon=True)
        self._thread.start()

    def put(self, event_id: str, body: bytes) -> None:
        """Queue a body; if the queue is full, the oldest waiting one is dropped."""
        with self._lock:
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                self._count("dropped")
            self._queue.append((event_id, body))
            self._lock.notify()

    def close(self, flush_s: float = FLUSH_S) -> dict[str, int]:
        """Deliver what is queued for up to `flush_s` seconds, drop the rest; the counts."""
        with self._lock:
            self._deadline = time.monotonic() + flush_s
            self._lock.notify()
        self._thread.join(flush_s + self.timeout_s)
        with self._lock:
            while self._queue:
                self._queue.popleft()
                self._count("dropped")
            return dict(self.counts)

    def _count(self, outcome: str) -> None:
        """With the lock held."""
        self.counts[outcome] += 1
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    def _over(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._queue and self._deadline is None:
                    self._lock.wait()
                if not self._queue or self._over():
                    return
                event_id, body = self._queue.popleft()
            outcome = self._deliver(event_id, body)
            with self._lock:
                self._count(outcome)

    def _deliver(self, event_id: str, body: bytes) -> str:
        """POST one body until it is taken or refused, or its attempts or the shutdown's time run out."""
        for attempt in range(self.attempts):
            if attempt:
                with self._lock:
                    self._count("retried")
                    self._lock.wait_for(self._over, self.backoff_s * 2 ** (attempt - 1))
                if self._over():
                    return "dropped"
            status = self._post(event_id, body)
            if 200 <= status < 300:
                return "sent"
            if 400 <= status < 500 and status not in (408, 429):
                return "dropped"  # refused: sending it again would not help
        return "dropped"

    def _post(self, event_id: str, body: bytes) -> int:
        """One POST; the HTTP status, or 0 when no answer came."""
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "anger-stream",
            EVENT_ID_HEADER: event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        request = urllib.request.Request(self.url, body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):  # refused, reset, timed out, a bad answer
            return 0


class Webhooks:
    """The hub sink: anger events of every call to each URL's `Sender`."""

    def __init__(self, senders: list[Sender]) -> None:
        self.senders = senders
        self._told: set[str] = set()  # calls with an anger event posted: their final status follows

    def events(self, events: list[CallEvent]) -> None:
        for call_id, e in events:
            if call_id is None:
                continue
            if isinstance(e, AngerStart | AngerEnd):
                self._told.add(call_id)
            elif not (isinstance(e, Status) and e.state in FINAL_STATES and call_id in self._told):
                continue
            else:
                self._told.discard(call_id)
            event_id = uuid.uuid4().hex
            body = json.dumps({"id": event_id, **line_fields(call_id), **e.to_dict()}, separators=(",", ":"))
            for sender in self.senders:
                sender.put(event_id, body.encode())

    def close(self, flush_s: float = FLUSH_S) -> list[dict[str, Any]]:
        """Stop every sender (the queues drain for up to `flush_s` seconds in all); each URL (as `shown`) and its
        counts."""
        deadline = time.monotonic() + flush_s
        return [{"url": shown(s.url), **s.close(max(deadline - time.monotonic(), 0.0))} for s in self.senders]


def read_secret(path: str | None, environ: Mapping[str, str]) -> bytes:
    """The shared secret: the file's first line, else the environment variable; ValueError if neither is there
    or it is too short."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                return check_secret(f.readline())
        except OSError as exc:
            raise ValueError(f"cannot read the webhook secret file {path}: {exc.strerror or exc}") from None
    if environ.get(WEBHOOK_SECRET_ENV):
        return check_secret(environ[WEBHOOK_SECRET_ENV])
    raise ValueError(f"--webhook needs a shared secret: --webhook-secret-file PATH or {WEBHOOK_SECRET_ENV}")
