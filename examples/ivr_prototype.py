"""IVR prototype: act on `anger-stream serve --webhook`: escalate a caller whose anger lasts, once per call.

    openssl rand -hex 32 > webhook.secret
    python examples/ivr_prototype.py --listen 127.0.0.1:8081 --secret-file webhook.secret --persist 3 &
    anger-stream serve --audiosocket 127.0.0.1:9092 --webhook http://127.0.0.1:8081/anger \\
        --webhook-secret-file webhook.secret

An HTTP endpoint (standard library only) that checks each POST's signature and timestamp, keeps one of each
event id (the server retries, so an event may come twice), and hands the events to `Escalation`: a call whose
anger has lasted --persist seconds of the call, from its onset to its anger_start (serve's --patience sets how
long anger must last before it starts) or to its anger_end's last_angry, is sent to a human agent, one JSON line per
decision on stdout, and a summary when the call ends. A call's channels (`"channel"`, stereo L16 calls) are
followed apart: only the caller's channel 0 is routed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import signal
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOLERANCE_S = 300
"""Timestamps older (or newer) than this are refused: a captured request cannot be replayed."""
REMEMBERED_IDS = 10_000
"""Event ids kept to recognise retries."""


def verify(secret: bytes, headers: Any, body: bytes, now: float | None = None) -> bool:
    """`X-Anger-Signature: sha256=<hex>` is the HMAC-SHA256 of `<X-Anger-Timestamp>.<body>`, and the timestamp is
    recent (docs/telephony.md, "Webhooks")."""
    timestamp = headers.get("X-Anger-Timestamp", "")
    if not timestamp.isdigit() or abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
        return False
    expected = "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, headers.get("X-Anger-Signature", ""))


@dataclass
class CallState:
    onset: float | None = None  # stream time the current anger began
    escalated: bool = False


class Escalation:
    """Routing policy: a caller angry for `persist` seconds in a row goes to a human agent."""

    def __init__(self, persist: float, queue: str = "agents") -> None:
        self.persist = persist
        self.queue = queue
        self.calls: dict[str, CallState] = {}

    def on_event(self, event: dict[str, Any]) -> None:
        """One webhook body: `anger_start` (t: when anger was confirmed, onset: where it began), `anger_end`
        (t: when its end was decided, last_angry: where its angry audio ended) or a final `status`."""
        if event.get("channel", 0) != 0:
            return
        call_id, kind = event["call"], event["type"]
        state = self.calls.setdefault(call_id, CallState())
        if kind == "status":
            self.calls.pop(call_id, None)
            self.decide(call_id, "ended", t=event["t"], state=event["state"], escalated=state.escalated)
            return
        if kind == "anger_start":
            state.onset = event["onset"]
        if state.onset is None:
            return
        angry_for = (event["last_angry"] if kind == "anger_end" else event["t"]) - state.onset
        if kind == "anger_end":
            state.onset = None
        if not state.escalated and angry_for >= self.persist:
            state.escalated = True
            self.decide(call_id, "escalate", t=event["t"], queue=self.queue, angry_for=round(angry_for, 2))

    @staticmethod
    def decide(call_id: str, action: str, **details: object) -> None:
        print(json.dumps({"call": call_id, "action": action, **details}), flush=True)


class Endpoint:
    """What the HTTP handler does with a POST: verify, drop a retry already handled, act."""

    def __init__(self, secret: bytes, policy: Escalation) -> None:
        self.secret, self.policy = secret, policy
        self.seen: OrderedDict[str, None] = OrderedDict()
        self.lock = threading.Lock()

    def post(self, headers: Any, body: bytes) -> int:
        """The HTTP status to answer: 401 for a bad signature or stale timestamp, 400 for a bad body, else 204."""
        if not verify(self.secret, headers, body):
            return 401
        try:
            event = json.loads(body)
            event_id = event["id"]
        except (ValueError, KeyError, TypeError):
            return 400
        with self.lock:  # the handler threads run one event at a time, each id once
            if event_id in self.seen:
                return 204
            self.seen[event_id] = None
            if len(self.seen) > REMEMBERED_IDS:
                self.seen.popitem(last=False)
            self.policy.on_event(event)
        return 204


def serve(endpoint: Endpoint, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(endpoint.post(self.headers, body))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT for the webhook (default %(default)s)")
    parser.add_argument("--secret-file", required=True, help="the shared secret serve signs with (first line)")
    parser.add_argument("--persist", type=float, default=3.0, help="seconds of anger before escalating")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    try:
        with open(args.secret_file, encoding="utf-8") as f:
            secret = f.readline().strip().encode()
        httpd = serve(Endpoint(secret, Escalation(args.persist)), host, int(port))
    except (OSError, ValueError) as exc:
        sys.exit(f"ivr_prototype: {exc}")
    host, port = httpd.server_address[:2]
    print(json.dumps({"listening": f"http://{host}:{port}/"}), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()


if __name__ == "__main__":
    main()
