"""IVR prototype: take calls over AudioSocket (Asterisk) or Media Streams, escalate callers who stay angry.

    python examples/ivr_prototype.py --audiosocket 127.0.0.1:9092 --persist 3

The telephony server's building blocks (`Hub`, `serve`) run the calls; instead of printing the detector's
JSON lines, the hub hands them to `Escalation`, which keeps each call's anger state and prints one routing
decision (a JSON line) when a call has been angry for --persist seconds without a break, and a summary
when the call ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass

from anger_stream.detector import DetectorConfig
from anger_stream.model import AngerModel, ModelError
from anger_stream.serve.hub import Hub, warm_up
from anger_stream.serve.server import Listen, ListenError, serve
from anger_stream.streams import StreamSet


@dataclass
class CallState:
    angry_since: float | None = None  # stream time the current anger segment started
    escalated: bool = False


class Escalation:
    """Routing policy: a caller angry for `persist` seconds in a row goes to a human agent."""

    def __init__(self, persist: float, queue: str = "agents") -> None:
        self.persist = persist
        self.queue = queue
        self.calls: dict[str, CallState] = {}

    def on_line(self, line: str) -> None:
        """One JSON line from the hub (the same lines `anger-stream serve` prints)."""
        event = json.loads(line)
        call_id = event.get("call")
        if call_id is None:  # a server line, e.g. where it listens
            print(line, flush=True)
            return
        state = self.calls.setdefault(call_id, CallState())
        kind = event["type"]
        if kind == "anger_start":
            state.angry_since = event["t"]
        elif kind == "anger_end":
            state.angry_since = None
        elif kind == "window" and state.angry_since is not None and not state.escalated:
            angry_for = event["t_end"] - state.angry_since
            if angry_for >= self.persist:
                state.escalated = True
                self.decide(call_id, "escalate", t=event["t_end"], queue=self.queue, angry_for=round(angry_for, 2))
        elif kind == "status" and event["state"] in ("end", "error", "interrupted"):
            self.calls.pop(call_id, None)
            self.decide(call_id, "ended", t=event["t"], state=event["state"], escalated=state.escalated)

    @staticmethod
    def decide(call_id: str, action: str, **details: object) -> None:
        print(json.dumps({"call": call_id, "action": action, **details}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audiosocket", help="HOST:PORT for Asterisk AudioSocket (default 127.0.0.1:9092)")
    parser.add_argument("--mediastream", help="HOST:PORT for Media Streams WebSockets")
    parser.add_argument("--persist", type=float, default=3.0, help="seconds of anger before escalating")
    parser.add_argument("--threshold", type=float, default=0.6, help="p(anger) at or above this is angry")
    parser.add_argument("--model", help="ONNX model (default: the packaged one)")
    args = parser.parse_args()
    if not (args.audiosocket or args.mediastream):
        args.audiosocket = "127.0.0.1:9092"
    try:
        listen = [
            Listen(protocol, address.rpartition(":")[0], int(address.rpartition(":")[2]))
            for protocol, address in (("audiosocket", args.audiosocket), ("mediastream", args.mediastream))
            if address
        ]
        streams = StreamSet(AngerModel(args.model), DetectorConfig(threshold=args.threshold))
        warm_up(streams)
        hub = Hub(streams, Escalation(args.persist).on_line)
        asyncio.run(serve(hub, listen))
    except (ModelError, ListenError, ValueError) as exc:
        sys.exit(f"ivr_prototype: {exc}")


if __name__ == "__main__":
    main()
