"""`serve --webhook`: signed anger events POSTed to a real local HTTP receiver that is slow, fails with 500s and
restarts; every event arrives (its retries told apart by the event id) or is counted as dropped."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from serve_support import CLI, ServeProcess, audiosocket_call

from anger_stream.serve import webhook as wh

SECRET = b"0123456789abcdef0123456789abcdef"


class Receiver:
    """An IVR's webhook endpoint on 127.0.0.1: `answer(n)` gives the status for the n-th request (from 0) and may
    sleep; every request is kept with its headers, and whether its signature verifies."""

    def __init__(self, answer: Callable[[int], int] = lambda n: 200, port: int = 0) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], bytes, bool]] = []
        self._lock = threading.Lock()
        self.port = port
        self.start()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    n = len(receiver.requests)
                    receiver.requests.append((dict(self.headers), body, wh.verify(SECRET, self.headers, body)))
                status = receiver.answer(n)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/anger?key=not-shown"

    def received(self) -> dict[str, dict]:
        """The bodies taken (2xx answered or not), by event id: retries of one event collapse into one."""
        return {json.loads(body)["id"]: json.loads(body) for _, body, _ in self.requests}


def test_signature_round_trip_and_replay() -> None:
    body, now = b'{"id":"e1","call":"c","type":"anger_start"}', time.time()
    headers = {wh.TIMESTAMP_HEADER: str(int(now))}
    headers[wh.SIGNATURE_HEADER] = wh.sign(SECRET, headers[wh.TIMESTAMP_HEADER], body)
    assert headers[wh.SIGNATURE_HEADER].startswith("sha256=") and len(headers[wh.SIGNATURE_HEADER]) == 7 + 64
    assert wh.verify(SECRET, headers, body, now)
    assert not wh.verify(SECRET, headers, body.replace(b"c", b"d"), now)  # another body
    assert not wh.verify(b"another secret, just as long", headers, body, now)
    assert not wh.verify(SECRET, headers, body, now + wh.TOLERANCE_S + 1)  # replayed later
    assert not wh.verify(SECRET, {**headers, wh.TIMESTAMP_HEADER: "soon"}, body, now)


def _put(sender: wh.Sender, n: int) -> list[str]:
    ids = [f"event-{i}" for i in range(n)]
    for event_id in ids:
        sender.put(event_id, json.dumps({"id": event_id, "type": "anger_start"}).encode())
    return ids


def test_a_slow_failing_receiver_gets_every_event_once_after_retries() -> None:
    """The 2nd request times out (the receiver still takes it), the 3rd to 5th get 500: those events are
    retried; the receiver sees them more than once, but by event id each exactly once, in order."""

    def answer(n: int) -> int:
        if n == 1:
            time.sleep(0.6)
        return 500 if n in (2, 3, 4) else 200

    receiver = Receiver(answer)
    outcomes: list[str] = []
    sender = wh.Sender(receiver.url, SECRET, outcomes.append, backoff_s=0.05, timeout_s=0.3)
    ids = _put(sender, 6)
    counts = sender.close(flush_s=10)
    receiver.stop()
    assert counts == {"sent": 6, "retried": 4, "dropped": 0}
    assert sorted(outcomes) == sorted(["sent"] * 6 + ["retried"] * 4)
    assert list(receiver.received()) == ids  # in order, each once by id
    assert len(receiver.requests) == 10
    assert all(ok for _, _, ok in receiver.requests), "every POST is signed"
    headers = receiver.requests[0][0]
    assert headers[wh.EVENT_ID_HEADER] == "event-0" and headers["Content-Type"] == "application/json"


def test_a_receiver_that_restarts_gets_what_was_retried_meanwhile() -> None:
    receiver = Receiver()
    port = receiver.port
    sender = wh.Sender(receiver.url, SECRET, backoff_s=0.2, attempts=6, timeout_s=1.0)
    first = _put(sender, 2)
    deadline = time.monotonic() + 10
    while len(receiver.requests) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    receiver.stop()  # down: connections refused
    later = [f"late-{i}" for i in range(3)]
    for event_id in later:
        sender.put(event_id, json.dumps({"id": event_id}).encode())
    time.sleep(0.5)
    restarted = Receiver(port=port)
    counts = sender.close(flush_s=10)
    restarted.stop()
    assert list(receiver.received()) == first and list(restarted.received()) == later
    assert counts["sent"] == 5 and counts["dropped"] == 0 and counts["retried"] >= 1


def test_a_dead_receiver_drops_the_oldest_and_counts_every_event() -> None:
    """Nobody listens: the queue (3) keeps the newest, the others are dropped, each counted once; at shutdown
    what is left is dropped too."""
    receiver = Receiver()
    receiver.stop()
    sender = wh.Sender(receiver.url, SECRET, max_queue=3, attempts=2, backoff_s=0.05, timeout_s=0.5)
    _put(sender, 50)
    counts = sender.close(flush_s=0.5)
    assert counts["sent"] == 0 and counts["dropped"] == 50


def test_a_refusing_receiver_is_not_retried() -> None:
    receiver = Receiver(lambda n: 403)
    sender = wh.Sender(receiver.url, SECRET, backoff_s=0.05)
    _put(sender, 2)
    counts = sender.close(flush_s=5)
    receiver.stop()
    assert counts == {"sent": 0, "retried": 0, "dropped": 2} and len(receiver.requests) == 2


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--webhook", "ftp://x/y"], {wh.WEBHOOK_SECRET_ENV: SECRET.decode()}, "needs an http:// or https:// URL"),
        (["--webhook", "http://127.0.0.1:9/"], {}, "needs a shared secret"),
        (["--webhook", "http://127.0.0.1:9/"], {wh.WEBHOOK_SECRET_ENV: "short"}, "at least 16 characters"),
        (["--webhook", "http://127.0.0.1:9/", "--webhook-secret-file", "/nonexistent"], {}, "cannot read"),
    ],
)
def test_usage_errors(args: list[str], env: dict[str, str], message: str) -> None:
    environ = {k: v for k, v in os.environ.items() if k != wh.WEBHOOK_SECRET_ENV} | env
    done = subprocess.run([CLI, "serve", "--audiosocket", "127.0.0.1:0", *args], capture_output=True, text=True,
                          env=environ, timeout=60)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1 and SECRET.decode() not in done.stderr


def test_serve_posts_a_calls_anger_events_once_each(speech: np.ndarray, tmp_path: Path) -> None:
    """A real call with threshold 0 (every window angry): anger_start, anger_end and the final status reach a
    receiver whose first answer is a 500 and whose second is slow; the server's last line counts them, and so
    does --metrics."""
    pytest.importorskip("prometheus_client")
    from test_serve_metrics import scrape, total

    def answer(n: int) -> int:
        if n == 1:
            time.sleep(0.3)
        return 500 if n == 0 else 200

    receiver = Receiver(answer)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET.decode() + "\n")
    server = ServeProcess("--threshold", "0", "--webhook", receiver.url, "--webhook-secret-file", str(secret_file),
                          "--metrics", "127.0.0.1:0")  # fmt: skip
    try:
        call = audiosocket_call(server.ports["audiosocket"], speech)
        lines = server.call_events(call)
        deadline = time.monotonic() + 20  # the sender counts a POST once its answer is back
        while total(metrics := scrape(server.ports["metrics"]), "anger_stream_webhook_posts_total") < 4:
            assert time.monotonic() < deadline, "the webhooks were not all delivered"
            time.sleep(0.05)
    finally:
        assert server.stop() == 0
        receiver.stop()
    got = list(receiver.received().values())
    assert [b["type"] for b in got] == ["anger_start", "anger_end", "status"]
    assert all(b["call"] == call for b in got) and got[-1]["state"] == "end"
    want = [e for e in lines if e["type"] in ("anger_start", "anger_end")] + [lines[-1]]
    assert [{k: v for k, v in b.items() if k != "id"} for b in got] == want
    assert all(ok for _, _, ok in receiver.requests) and len(receiver.requests) == 4  # one retry
    assert total(metrics, "anger_stream_webhook_posts_total", outcome="sent") == 3
    assert total(metrics, "anger_stream_webhook_posts_total", outcome="retried") == 1
    last = server.next(5)
    assert last == {"type": "status", "state": "webhook", "t": 0.0, "url": f"http://127.0.0.1:{receiver.port}/anger",
                    "sent": 3, "retried": 1, "dropped": 0}  # fmt: skip
