"""`anger-stream serve`: the telephony servers as a CLI subcommand (wired in anger_stream/cli.py)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .. import options
from ..events import Event, Status, Window, to_json
from .security import TOKEN_ENV, TWILIO_ENV, WEBHOOK_SECRET_ENV

if TYPE_CHECKING:
    from ..config import DetectorConfig
    from .dashboard import Snapshots
    from .hub import Sink

DEFAULT_AUDIOSOCKET = "127.0.0.1:9092"
DEFAULT_MEDIASTREAM = "127.0.0.1:8765"
DEFAULT_WEBSOCKET_PCM = "127.0.0.1:8766"
ENV_PREFIX = "ANGER_STREAM_SERVE"
"""Every option of `serve` can also come from the environment, as ENV_PREFIX_<OPTION> (containers)."""
MAX_BATCH = 32
"""Windows per model call at most (--max-batch): a tick's windows in few calls, with little gain beyond this."""


def json_lines(write: Callable[[str], None], events_only: bool) -> Sink:
    """The sink of `serve`: each event as one JSON line (the call id first), window lines left out if asked."""
    from ..calls import line_fields

    def sink(events: list[tuple[str | None, Event]]) -> None:
        for call_id, event in events:
            if not (events_only and isinstance(event, Window)):
                write(to_json(event) if call_id is None else to_json(event, **line_fields(call_id)))

    return sink


def parse_address(value: str, option: str) -> tuple[str, int]:
    """HOST:PORT (or just PORT, on 127.0.0.1) -> (host, port)."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise typer.BadParameter(f"expected HOST:PORT, got {value!r}", param_hint=option)
    return host, int(port)


def serve(
    audiosocket: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help=f"Serve Asterisk AudioSocket on HOST:PORT (e.g. {DEFAULT_AUDIOSOCKET}; port 0: any).",
        ),
    ] = None,
    mediastream: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT", help=f"Serve Media Streams WebSockets on HOST:PORT (e.g. {DEFAULT_MEDIASTREAM})."
        ),
    ] = None,
    websocket_pcm: Annotated[
        str | None,
        typer.Option(
            "--websocket-pcm",
            metavar="HOST:PORT",
            help=f"Serve L16 audio over WebSocket (FreeSWITCH mod_audio_fork, Jambonz listen, Vonage) on HOST:PORT "
            f"(e.g. {DEFAULT_WEBSOCKET_PCM}).",
        ),
    ] = None,
    threshold: options.Threshold = None,
    model: options.Model = None,
    min_dbfs: options.MinDbfs = None,
    patience: options.Patience = None,
    hysteresis: options.Hysteresis = None,
    hold: options.Hold = None,
    config: options.ConfigFile = None,
    events_only: options.EventsOnly = False,
    read_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, max=3600, metavar="SECONDS", help="Close a call that sends no audio for this many seconds."
        ),
    ] = 10.0,
    marks: Annotated[
        bool, typer.Option("--marks", help="Media Streams: send a mark per anger event (bidirectional streams).")
    ] = False,
    threads: Annotated[int, typer.Option(min=1, metavar="N", help="Concurrent scoring threads per tick.")] = min(
        2, os.cpu_count() or 1
    ),
    max_batch: Annotated[int, typer.Option(min=1, metavar="N", help="Most windows per model call.")] = MAX_BATCH,
    workers: Annotated[
        int,
        typer.Option(
            min=1, max=64, metavar="N", help="Server processes sharing the ports (one per core holds the most calls)."
        ),
    ] = 1,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV,
            metavar="TOKEN",
            help="A secret that WebSocket upgrades must present (Authorization: Bearer, or ?token=) and that "
            "guards the --dashboard page (its sign-in form, or Authorization: Bearer). Better in the environment "
            "variable: a command line is visible to other users.",
        ),
    ] = None,
    twilio_auth_token: Annotated[
        str | None,
        typer.Option(
            envvar=TWILIO_ENV,
            metavar="TOKEN",
            help="Media Streams: admit upgrades signed by Twilio (X-Twilio-Signature) with this account's auth token "
            "(better in the environment variable).",
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(metavar="PEM", help="WebSockets: serve wss:// with this certificate (chain).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(metavar="PEM", help="Its private key (default: in the --tls-cert file).")
    ] = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NETWORK",
            help="Accept connections only from this network, e.g. 10.0.0.0/8 (repeatable; both protocols).",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Serve Prometheus metrics on http://HOST:PORT/metrics (a bare PORT: 127.0.0.1; all workers' "
            "counts). Needs the metrics extra.",
        ),
    ] = None,
    dashboard: Annotated[
        str | None,
        typer.Option(
            metavar="HOST:PORT",
            help="Serve a live page of the calls on http://HOST:PORT/ (a bare PORT: 127.0.0.1; read-only; with "
            "--token, the page needs it too).",
        ),
    ] = None,
    webhook: Annotated[
        list[str] | None,
        typer.Option(
            metavar="URL",
            help="POST each anger_start and anger_end (and the final status of a call that had one) to URL as signed "
            "JSON (repeatable; X-Anger-Signature, see docs/telephony.md). Needs --webhook-secret-file or "
            f"{WEBHOOK_SECRET_ENV}.",
        ),
    ] = None,
    webhook_secret_file: Annotated[
        Path | None,
        typer.Option(metavar="PATH", help="The webhooks' shared secret: this file's first line (16+ characters)."),
    ] = None,
) -> None:
    """Serve phone calls (Asterisk AudioSocket, Media Streams, L16 WebSocket): JSON lines with the call id on stdout.

    Listens on 127.0.0.1 unless told otherwise; beyond it, see --allow, --token, --twilio-auth-token and
    --tls-cert. Every option can also be set in the environment variable its help names (e.g.
    ANGER_STREAM_SERVE_AUDIOSOCKET=0.0.0.0:9092); the command line wins. Exit codes as for detection; 3: cannot
    listen.
    """
    import asyncio

    from ..calls import MAX_TAKE_S, MAX_WINDOWS_PER_TICK, Calls
    from ..model import AngerModel, ModelError
    from ..stdio import EXIT_INPUT, EXIT_MODEL, EXIT_USAGE, StdoutClosed, emit_line, fail, require
    from ..streams import StreamSet
    from .audiosocket_connection import AudioSocketConnection
    from .hub import Hub, ScoringThread, tee
    from .log import log, writing
    from .security import Policy, exposure_warning, parse_network, tls_context
    from .server import Listen, ListenError
    from .server import serve as run_servers
    from .workers import LineLock, bind
    from .workers import run as run_workers

    if audiosocket is None and mediastream is None and websocket_pcm is None:
        raise typer.BadParameter(
            f"give --audiosocket HOST:PORT, --mediastream HOST:PORT and/or --websocket-pcm HOST:PORT "
            f"(e.g. {DEFAULT_AUDIOSOCKET}, {DEFAULT_MEDIASTREAM}, {DEFAULT_WEBSOCKET_PCM})"
        )
    if mediastream is None and websocket_pcm is None and (tls_cert or tls_key):
        fail("--tls-cert/--tls-key apply to the WebSocket listeners only (AudioSocket has no TLS: restrict it with "
             "--allow)", EXIT_USAGE)  # fmt: skip
    if tls_key is not None and tls_cert is None:
        fail("--tls-key needs --tls-cert", EXIT_USAGE)
    try:
        policy = Policy(token, twilio_auth_token, tuple(parse_network(net) for net in allow or ()))
        tls = tls_context(tls_cert, tls_key) if tls_cert is not None else None
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    listen = []
    if audiosocket is not None:
        listen.append(Listen(AudioSocketConnection, *parse_address(audiosocket, "--audiosocket")))
    if mediastream is not None:
        require("websockets", "serve", "--mediastream")
        from .mediastream_connection import MediaStreamConnection

        listen.append(Listen(MediaStreamConnection, *parse_address(mediastream, "--mediastream"), tls=tls))
    if websocket_pcm is not None:
        require("websockets", "serve", "--websocket-pcm")
        from .websocket_pcm_connection import WebSocketPcmConnection

        listen.append(Listen(WebSocketPcmConnection, *parse_address(websocket_pcm, "--websocket-pcm"), tls=tls))
    metrics_at = None
    if metrics is not None:
        require("prometheus_client", "metrics", "--metrics")
        metrics_at = parse_address(metrics, "--metrics")
    dashboard_at = parse_address(dashboard, "--dashboard") if dashboard is not None else None
    if webhook:
        from .webhook import check_url, read_secret

        try:
            urls, secret = [check_url(url) for url in webhook], read_secret(webhook_secret_file, os.environ)
        except ValueError as exc:
            fail(str(exc), EXIT_USAGE)
    settings = options.detector_settings(
        config,
        threshold=threshold,
        model=model,
        min_dbfs=min_dbfs,
        patience=patience,
        hysteresis=hysteresis,
        hold=hold,
    )
    detector_config, model = settings.config, settings.model
    for spec in listen:
        if warning := exposure_warning(spec.protocol, spec.host, spec.port, policy, spec.tls is not None):
            log(warning)
    try:
        loaded = AngerModel(model, threads=1)  # a bad model is one error line here, not one per worker
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)

    snapshots = None
    write = emit_line if workers == 1 else partial(emit_line, lock=LineLock())
    if workers > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
        fail("--workers needs fork() and SO_REUSEPORT (Linux); run one server per port instead", EXIT_USAGE)

    def work(worker: int | None, listen: list[Listen], scorer: AngerModel | None = None) -> None:
        """One server process; a forked worker loads its own model."""
        scorer = scorer or AngerModel(model, threads=1)
        streams = StreamSet(
            scorer,
            detector_config,
            max_batch=max_batch,
            workers=threads,
            max_windows=MAX_WINDOWS_PER_TICK,
            held_s=detector_config.window_s + MAX_TAKE_S,
        )
        streams.warm_up()
        sink, on_tick = json_lines(write, events_only), None
        if metrics_at is not None:
            from .prometheus import CallMetrics

            counted = CallMetrics(spec.protocol for spec in listen)
            sink, on_tick = tee(sink, counted.events), counted.tick
        if snapshots is not None:
            from .board import Board
            from .dashboard import publisher

            sink = tee(sink, publisher(Board(), snapshots, worker))
        webhooks = None
        if webhook:
            from .webhook import Sender, Webhooks

            with _signals_for_main_thread():
                webhooks = Webhooks([Sender(url, secret, counted.webhook if metrics_at else None) for url in urls])
            sink = tee(sink, webhooks.events)
        hub = Hub(Calls(), ScoringThread(streams), sink, on_tick)
        try:
            with writing():  # stderr lines from a thread: a stderr nobody reads cannot stall the calls
                asyncio.run(run_servers(hub, listen, read_timeout, marks, worker, policy))
        except StdoutClosed:
            return
        except ListenError as exc:
            fail(str(exc), EXIT_INPUT)
        finally:
            delivered = webhooks.close() if webhooks is not None else []
        for counts in delivered:  # the server stopped: what each URL got
            emit_line(to_json(Status("webhook", 0.0, {**counts, **({} if worker is None else {"worker": worker})})))

    with contextlib.ExitStack() as stack:
        with _signals_for_main_thread():  # the endpoints' threads never take SIGINT/SIGTERM
            if metrics_at is not None:
                stack.enter_context(_metrics_endpoint(*metrics_at, model))
            if dashboard_at is not None:
                snapshots = stack.enter_context(_dashboard(*dashboard_at, workers, token, detector_config))
        if workers == 1:
            work(None, listen, loaded)
            return
        del loaded  # each worker loads its own after the fork
        try:
            per_worker = bind(listen, workers)
        except ListenError as exc:
            fail(str(exc), EXIT_INPUT)
        code = run_workers(per_worker, work)
    raise typer.Exit(code)


@contextlib.contextmanager
def _signals_for_main_thread() -> Iterator[None]:
    """Block SIGINT and SIGTERM in threads started within: a stop signal then always reaches the main thread,
    where the server (or the parent of the workers, waiting for them) handles it."""
    import signal

    stop = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def _metrics_endpoint(host: str, port: int, model: str | None) -> Iterator[None]:
    """The metrics endpoint for this process and the workers it starts (`listening` line and all), and the
    folder of their values, removed at the end."""
    from ..model import DEFAULT_MODEL, is_packaged
    from ..stdio import EXIT_INPUT, fail
    from . import prometheus

    name = (model or DEFAULT_MODEL) if is_packaged(model) else Path(model or "").name
    folder = prometheus.prepare()
    try:
        try:
            server, port = prometheus.serve_endpoint(host, port, name)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} (metrics): {exc.strerror or exc}", EXIT_INPUT)
        try:
            _listening("metrics", host, port, "its counts are readable by anyone who reaches the port")
            yield
        finally:
            server.close()
    finally:
        prometheus.cleanup(folder)


@contextlib.contextmanager
def _dashboard(host: str, port: int, workers: int, token: str | None, config: DetectorConfig) -> Iterator[Snapshots]:
    """The supervisor's page for this process and the workers it starts, and where they put their snapshots."""
    from ..stdio import EXIT_INPUT, fail
    from .dashboard import Snapshots, serve_dashboard

    snapshots = Snapshots(config) if workers == 1 else Snapshots.shared(config)
    try:
        try:
            server, port = serve_dashboard(host, port, snapshots, token)
        except OSError as exc:
            fail(f"cannot listen on {host}:{port} (dashboard): {exc.strerror or exc}", EXIT_INPUT)
        try:
            _listening("dashboard", host, port, "" if token else "anyone who reaches it sees the calls (--token)")
            yield snapshots
        finally:
            server.close()
    finally:
        snapshots.cleanup()


def _listening(protocol: str, host: str, port: int, exposed: str) -> None:
    """The `listening` line and log line of an endpoint; a warning if `exposed` says why one beyond loopback is."""
    from ..stdio import emit_line
    from .log import log
    from .security import is_loopback

    log(f"{protocol} listening on {host}:{port}")
    if exposed and not is_loopback(host):
        log(f"WARNING: {protocol} on {host}:{port} is reachable beyond this host: {exposed} (see the README)")
    emit_line(to_json(Status("listening", 0.0, {"protocol": protocol, "host": host, "port": port})))
