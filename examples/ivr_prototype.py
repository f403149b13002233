"""IVR prototype: take calls over AudioSocket (Asterisk) or Media Streams, escalate callers who stay angry.

    python examples/ivr_prototype.py --audiosocket 127.0.0.1:9092 --persist 3

The telephony server's building blocks (`Calls`, `Hub`, `serve`) run the calls; instead of printing the
detector's JSON lines, the hub hands the typed events to `Escalation`, which keeps each call's anger state
and prints one routing decision (a JSON line) when a call has been angry for --persist seconds without a
break, and a summary when the call ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import dataclass

from anger_stream.calls import MAX_WINDOWS_PER_TICK, CallEvent, Calls
from anger_stream.detector import DetectorConfig
from anger_stream.events import AngerEnd, AngerStart, Status, Window, to_json
from anger_stream.model import AngerModel, ModelError
from anger_stream.serve.audiosocket_connection import AudioSocketConnection
from anger_stream.serve.hub import Hub, ScoringThread
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

    def on_events(self, events: list[CallEvent]) -> None:
        """Events from the hub, with their call ids (None: a line about the server, e.g. where it listens)."""
        for call_id, event in events:
            if call_id is None:
                print(to_json(event), flush=True)
            else:
                self.on_event(call_id, event)

    def on_event(self, call_id: str, event: object) -> None:
        state = self.calls.setdefault(call_id, CallState())
        if isinstance(event, AngerStart):
            state.angry_since = event.t
        elif isinstance(event, AngerEnd):
            state.angry_since = None
        elif isinstance(event, Window) and state.angry_since is not None and not state.escalated:
            angry_for = event.t_end - state.angry_since
            if angry_for >= self.persist:
                state.escalated = True
                self.decide(
                    call_id, "escalate", t=round(event.t_end, 3), queue=self.queue, angry_for=round(angry_for, 2)
                )
        elif isinstance(event, Status) and event.state in ("end", "error", "interrupted"):
            self.calls.pop(call_id, None)
            self.decide(call_id, "ended", t=round(event.t, 3), state=event.state, escalated=state.escalated)

    @staticmethod
    def decide(call_id: str, action: str, **details: object) -> None:
        print(json.dumps({"call": call_id, "action": action, **details}), flush=True)


def address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)


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
        listen = []
        if args.audiosocket:
            listen.append(Listen(AudioSocketConnection, *address(args.audiosocket)))
        if args.mediastream:
            from anger_stream.serve.mediastream_connection import MediaStreamConnection  # needs websockets

            listen.append(Listen(MediaStreamConnection, *address(args.mediastream)))
        config = DetectorConfig(threshold=args.threshold)
        streams = StreamSet(AngerModel(args.model), config, max_windows=MAX_WINDOWS_PER_TICK)
        streams.warm_up()
        hub = Hub(Calls(), ScoringThread(streams), Escalation(args.persist).on_events)
        asyncio.run(serve(hub, listen))
    except (ModelError, ListenError, ValueError) as exc:
        sys.exit(f"ivr_prototype: {exc}")


if __name__ == "__main__":
    main()
