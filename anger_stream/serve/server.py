"""asyncio telephony servers (AudioSocket over TCP, Media Streams over WebSocket) around one StreamSet.

Every call is one stream of a shared `StreamSet`. Connection handlers only parse and buffer audio; the
`Hub` pushes a call's buffered audio into the set when a window of it is due and runs `tick()` (one
batched model call for every due window of every call) in a worker thread, so the event loop keeps
reading sockets while the model runs. Only the worker touches the set while a tick is under way.
Events go to stdout as JSON lines with the call id first; problems with one call go to stderr and end
that call only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from math import ceil
from typing import Any

import numpy as np

from .. import audio
from ..detector import Stream, score_windows
from ..events import AngerStart, Event, Status, Window, to_json
from ..streams import StreamSet
from . import audiosocket, mediastream


def log(message: str) -> None:
    """One line for people on stderr."""
    print(f"anger-stream serve: {message}", file=sys.stderr, flush=True)


class DuplicateCall(Exception):
    """A call id that is already being served."""


@dataclass
class Call:
    """The hub's view of one call: audio waiting for the stream set and what to report at its end."""

    call_id: str
    sample_rate: int
    on_events: Callable[[list[Event]], None] | None
    chunks: list[np.ndarray] = field(default_factory=list)
    received: int = 0  # input samples received
    pushed: int = 0  # input samples handed to the stream set
    due_at: int = 0  # input samples at which the next window is complete
    added: bool = False
    ending: tuple[str, dict[str, Any]] | None = None
    t_end: float = 0.0
    counts: dict[str, int] = field(
        default_factory=lambda: {"windows": 0, "angry_windows": 0, "silent_windows": 0, "anger_segments": 0}
    )


class Hub:
    """Calls in, JSON lines out: buffers each call's audio and ticks the shared StreamSet when windows are due."""

    def __init__(self, streams: StreamSet, emit: Callable[[str], None], events_only: bool = False) -> None:
        self.streams = streams
        self._output = emit
        self.failure: Exception | None = None  # the output failed (e.g. stdout closed): the server stops
        self.failed = asyncio.Event()
        self.events_only = events_only
        self.calls: dict[str, Call] = {}
        self._ready: dict[str, Call] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="anger-tick")
        self._warned = -3600.0

    def open(
        self,
        call_id: str,
        sample_rate: int,
        info: dict[str, Any],
        on_events: Callable[[list[Event]], None] | None = None,
    ) -> None:
        """Start a call (a start status line); DuplicateCall if the id is being served."""
        if call_id in self.calls:
            raise DuplicateCall(f"call id {call_id!r} is already being served")
        call = Call(call_id, sample_rate, on_events)
        call.due_at = self._due_at(call, 0)
        self.calls[call_id] = call
        self._idle.clear()
        self.emit(to_json(Status("start", 0.0, {"sample_rate": sample_rate, **info}), call=call_id))

    def push(self, call_id: str, samples: np.ndarray) -> None:
        """Buffer float samples of a call; wakes the ticker once a window is complete."""
        call = self.calls[call_id]
        if call.ending is not None or not len(samples):
            return
        call.chunks.append(samples)
        call.received += len(samples)
        if call.received >= call.due_at:
            self._ready[call_id] = call
            self._wake.set()

    def end(self, call_id: str, state: str, info: dict[str, Any] | None = None) -> None:
        """End a call: its last windows are scored, then a final status line. Later calls are no-ops."""
        call = self.calls.get(call_id)
        if call is None or call.ending is not None:
            return
        call.ending = (state, info or {})
        call.t_end = call.received / call.sample_rate
        self._ready[call_id] = call
        self._wake.set()

    def emit(self, line: str) -> None:
        """One output line; if the output fails, remember why and stop serving (no more lines)."""
        if self.failure is not None:
            return
        try:
            self._output(line)
        except Exception as exc:  # StdoutClosed, or whatever a custom sink raises
            self.failure = exc
            self.failed.set()

    def note(self, call_id: str, status: Status) -> None:
        """A status line for a call at once (DTMF, an error before the call started)."""
        self.emit(to_json(status, call=call_id))

    def t(self, call_id: str) -> float:
        """Seconds of audio received for a call."""
        call = self.calls.get(call_id)
        return call.received / call.sample_rate if call else 0.0

    async def idle(self) -> None:
        """Wait until every call has ended and been reported."""
        await self._idle.wait()

    async def run(self) -> None:
        """Tick whenever a call has a window due or has ended (forever)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                ops = [(c, c.chunks, c.ending is not None) for c in self._ready.values()]
                self._ready = {}
                for call, _, _ in ops:
                    call.chunks, call.pushed = [], call.received
                started = time.monotonic()
                results, samples = await loop.run_in_executor(self._pool, self._work, ops)
                self._publish(ops, results, samples)
                self._check_pace(time.monotonic() - started, sum(map(len, results.values())))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _check_pace(self, elapsed: float, n_events: int) -> None:
        """Warn (at most once a minute) when scoring takes longer than a hop: latency then keeps growing."""
        hop = self.streams.config.hop_s
        if elapsed > hop and time.monotonic() - self._warned > 60:
            self._warned = time.monotonic()
            log(f"falling behind: a tick of {n_events} events took {elapsed:.2f} s (hop {hop:g} s); too many calls")

    def _work(self, ops: list[tuple[Call, list[np.ndarray], bool]]) -> tuple[dict[Hashable, list[Event]], dict]:
        """In the worker thread: feed the set, end calls, tick. Returns events and 16 kHz samples per call."""
        samples = {}
        for call, chunks, ending in ops:
            if not call.added:
                self.streams.add(call.call_id, call.sample_rate)
                call.added = True
            if chunks:
                self.streams.push(call.call_id, np.concatenate(chunks))
            if ending:
                self.streams.end(call.call_id)
            samples[call.call_id] = self.streams.streams[call.call_id].windower.samples
        return self.streams.tick(), samples

    def _due_at(self, call: Call, samples16: int) -> int:
        """Input samples needed for the next window after `samples16` samples at 16 kHz."""
        c = self.streams.config
        cut = 0 if samples16 < c.window else (samples16 - c.window) // c.hop + 1
        return ceil((c.window + cut * c.hop) * call.sample_rate / audio.SAMPLE_RATE)

    def _publish(self, ops, results: dict[Hashable, list[Event]], samples: dict) -> None:
        for call, _, ending in ops:
            events = results.get(call.call_id, [])
            call.due_at = self._due_at(call, samples[call.call_id])
            if not ending and call.ending is None and call.pushed < call.received >= call.due_at:
                self._ready[call.call_id] = call  # more audio arrived during the tick
                self._wake.set()
            for e in events:
                if isinstance(e, Window):
                    call.counts["windows"] += 1
                    call.counts["angry_windows"] += e.angry
                    call.counts["silent_windows"] += e.silent
                    if self.events_only:
                        continue
                call.counts["anger_segments"] += isinstance(e, AngerStart)
                self.emit(to_json(e, call=call.call_id))
            if call.on_events is not None and events:
                call.on_events(events)
            if ending:
                state, info = call.ending
                self.emit(to_json(Status(state, call.t_end, {**call.counts, **info}), call=call.call_id))
                del self.calls[call.call_id]
        if not self.calls:
            self._idle.set()


def warm_up(streams: StreamSet, rates: tuple[int, ...] = (8_000,)) -> None:
    """Run the model and each resampler once: first runs are slow (allocation, lazy imports), not on a call."""
    for rate in rates:
        stream = Stream(streams.config, rate)
        stream.push(np.full(rate * 2, 0.1, dtype=np.float32))
        stream.finish()
        score_windows(streams.model, stream.take(), streams.config)


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


class Server:
    """The connection handlers of both protocols, feeding one Hub."""

    def __init__(self, hub: Hub, read_timeout: float = 10.0, marks: bool = False) -> None:
        self.hub = hub
        self.read_timeout = read_timeout
        self.marks = marks
        self._closers: set[Callable[[], None]] = set()

    def _fail(self, call_id: str, message: str, opened: bool) -> None:
        """Log a call's error and report it: after its last windows if it started, at once otherwise."""
        log(f"call {call_id}: {message}; closing it")
        if opened:
            self.hub.end(call_id, "error", {"error": message})
        else:
            self.hub.note(call_id, Status("error", 0.0, {"error": message}))

    def close_all(self) -> None:
        """Shutdown: end every call as interrupted and close its connection."""
        for call_id in list(self.hub.calls):
            self.hub.end(call_id, "interrupted")
        for close in list(self._closers):
            close()

    async def audiosocket(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One AudioSocket connection: UUID, audio frames, hangup (or EOF)."""
        peer = _peer(writer.get_extra_info("peername"))
        parser = audiosocket.Parser()
        call_id = f"audiosocket:{peer}"  # until the UUID frame names the call
        opened = False
        self._closers.add(writer.close)
        try:
            while True:
                event = parser.next_event()
                if event is audiosocket.NEED_DATA:
                    async with asyncio.timeout(self.read_timeout):  # far cheaper per frame than wait_for
                        parser.receive_data(await reader.read(65536))
                elif isinstance(event, audiosocket.CallId):
                    call_id = event.call_id
                elif isinstance(event, audiosocket.Audio):
                    if not opened:
                        info = {"protocol": "audiosocket", "peer": peer}
                        self.hub.open(call_id, event.sample_rate, info)
                        opened = True
                    self.hub.push(call_id, audio.to_float(event.samples))
                elif isinstance(event, audiosocket.Dtmf):
                    self.hub.note(call_id, Status("dtmf", self.hub.t(call_id), {"digit": event.digit}))
                elif isinstance(event, audiosocket.AsteriskError):
                    if event.code == 1 and opened:  # the caller hung up
                        self.hub.end(call_id, "end", {"asterisk_error": 1})
                    else:
                        self._fail(call_id, f"Asterisk reported error code {event.code}", opened)
                    break
                else:  # Hangup
                    if opened:
                        self.hub.end(call_id, "end")
                    elif parser.received_anything:
                        self.hub.note(call_id, Status("end", 0.0, {"windows": 0}))
                    break
        except audiosocket.ProtocolError as exc:
            self._fail(call_id, f"protocol error: {exc}", opened)
        except TimeoutError:
            self._fail(call_id, f"no data for {self.read_timeout:g} s", opened)
        except DuplicateCall as exc:
            opened = False  # the other connection owns that id
            self._fail(f"{call_id}@{peer}", str(exc), opened)
        except (ConnectionError, OSError) as exc:
            self._fail(call_id, f"connection lost: {exc}", opened)
        finally:
            self._closers.discard(writer.close)
            if opened:
                self.hub.end(call_id, "interrupted")
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def mediastream(self, ws: Any) -> None:
        """One Media Streams WebSocket: connected, start, media..., stop."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        peer = _peer(ws.remote_address)
        parser = mediastream.Parser()
        call_id = f"mediastream:{peer}"
        opened = False
        tasks: set[asyncio.Task] = set()

        def close() -> None:
            tasks.add(asyncio.ensure_future(ws.close(1001, "server shutting down")))

        def send_marks(events: list[Event]) -> None:
            for e in events:
                if not isinstance(e, Window) and not isinstance(e, Status):
                    name = f"{e.to_dict()['type']}:{e.t:.3f}"
                    task = asyncio.ensure_future(ws.send(mediastream.mark_message(parser.start.stream_sid, name)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)

        self._closers.add(close)
        try:
            while True:
                try:
                    async with asyncio.timeout(self.read_timeout):
                        message = await ws.recv()
                except ConnectionClosedOK:
                    if opened:
                        self.hub.end(call_id, "end", {"stop": False})
                    break
                event = parser.receive(message)
                if isinstance(event, mediastream.Start):
                    call_id = event.call_id
                    info = {"protocol": "mediastream", "peer": peer, "stream": event.stream_sid}
                    self.hub.open(call_id, event.sample_rate, info, send_marks if self.marks else None)
                    opened = True
                elif isinstance(event, mediastream.Media):
                    if event.track == "inbound":
                        self.hub.push(call_id, event.samples)
                elif isinstance(event, mediastream.Dtmf):
                    self.hub.note(call_id, Status("dtmf", self.hub.t(call_id), {"digit": event.digit}))
                elif isinstance(event, mediastream.Stop):
                    if opened:
                        self.hub.end(call_id, "end")
                    break
        except mediastream.ProtocolError as exc:
            self._fail(call_id, f"protocol error: {exc}", opened)
        except TimeoutError:
            self._fail(call_id, f"no message for {self.read_timeout:g} s", opened)
        except DuplicateCall as exc:
            opened = False
            self._fail(f"{call_id}@{peer}", str(exc), opened)
        except ConnectionClosed as exc:
            self._fail(call_id, f"connection lost: {exc}", opened)
        finally:
            self._closers.discard(close)
            if opened:
                self.hub.end(call_id, "interrupted")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 1.0)
            for task in tasks:
                task.cancel()


@dataclass(frozen=True)
class Listen:
    protocol: str  # "audiosocket" or "mediastream"
    host: str
    port: int


def _log_unexpected(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's last resort, in one line instead of a traceback."""
    exc = context.get("exception")
    log(f"internal error: {context.get('message', '')}: {type(exc).__name__}: {exc}" if exc else context["message"])


def _health(connection: Any, request: Any) -> Any:
    """Plain HTTP GET /health (load balancer checks) gets 200 instead of a WebSocket upgrade."""
    from http import HTTPStatus

    if request.path == "/health":
        return connection.respond(HTTPStatus.OK, "OK\n")
    return None


class ListenError(Exception):
    """An address to listen on is taken, invalid or not allowed."""


async def _listen(server: Server, spec: Listen) -> Any:
    if spec.protocol == "audiosocket":
        return await asyncio.start_server(server.audiosocket, spec.host, spec.port)
    import logging

    from websockets.asyncio.server import serve as ws_serve

    quiet = logging.getLogger("anger_stream.serve.websockets")
    quiet.setLevel(logging.CRITICAL)  # failed handshakes would be logged with tracebacks
    return await ws_serve(
        server.mediastream, spec.host, spec.port, max_size=1 << 16, process_request=_health, logger=quiet
    )


async def serve(
    hub: Hub,
    listen: list[Listen],
    read_timeout: float = 10.0,
    marks: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM; then end every call ("interrupted"), report it, and return."""
    server = Server(hub, read_timeout, marks)
    listeners = []
    for spec in listen:
        try:
            listeners.append(await _listen(server, spec))
        except OSError as exc:
            raise ListenError(
                f"cannot listen on {spec.host}:{spec.port} ({spec.protocol}): {exc.strerror or exc}"
            ) from None
        host, port = listeners[-1].sockets[0].getsockname()[:2]
        log(f"{spec.protocol} listening on {host}:{port}")
        hub.emit(to_json(Status("listening", 0.0, {"protocol": spec.protocol, "host": host, "port": port})))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.set_exception_handler(_log_unexpected)
    ticker = asyncio.create_task(hub.run())
    stopper = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(hub.failed.wait())
    try:
        await asyncio.wait([ticker, stopper, failed], return_when=asyncio.FIRST_COMPLETED)
        if ticker.done():
            ticker.result()  # the model failed: raise its error
        if hub.failure is not None:
            raise hub.failure
        for srv in listeners:
            srv.close()
        server.close_all()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(hub.idle(), 10.0)
    finally:
        for srv in listeners:
            srv.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        ticker.cancel()
        stopper.cancel()
        failed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
