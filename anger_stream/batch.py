"""`anger-stream batch`: score an archive of recordings on a Dask cluster, one JSON line per recording.

Workers read the files themselves (the client submits paths, short files in chunks), load the model once per
process and return one record per recording; the client writes each record as soon as its task completes.
dask and distributed are imported inside functions so that the CLI starts fast.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO

import numpy as np
import typer

from . import channels, options
from .detector import AngerDetector, DetectorConfig
from .events import AngerEnd, AngerStart, Event, Window
from .files import OutputExists, check_input, open_output, shown
from .model import AngerModel, ModelError, is_packaged
from .sources import InputError
from .sources.file import Recording, read_recording

if TYPE_CHECKING:
    from distributed import Client

AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64"}
    | {".rf64", ".snd", ".sph", ".nist", ".voc"}
)
"""What a folder walk picks up (files named explicitly or by a glob are taken whatever their name)."""
CHUNK_BYTES = 2 << 20
CHUNK_FILES = 16
DEFAULT_WORKERS = 2
WORKERS_PER_CORE = 4
"""The most local worker processes per core --workers may ask for."""
DEFAULT_TIMEOUT = 600.0
"""Seconds a worker may spend on one file (reading and scoring) before it is given up."""

WORKER_CONFIG = {
    # Dask sets MALLOC_TRIM_THRESHOLD_ in its worker processes, which stops glibc from adapting its mmap
    # threshold: every window batch is then mapped and unmapped afresh, about 30% more CPU for this workload.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,  # the sampling profiler, every 10 ms: not needed here
}
"""Dask settings for the local cluster's workers (docs/batch.md shows the same for `dask worker`)."""

SETTINGS = ("threshold", "patience", "hysteresis", "hold_s", "min_dbfs")
"""DetectorConfig fields every line carries (the options that change its windows and segments)."""

_MODELS: dict[str | None, AngerModel] = {}
"""Per process (so per Dask worker): the models loaded so far, by path (None: the packaged model)."""


# --- one recording ------------------------------------------------------------------------------------


def summarise(events: list[Event], threshold: float) -> dict[str, Any]:
    """Window scores, peak, share angry and anger segments [onset, last angry window's end] from a recording's
    events.

    The events are those of `AngerDetector.analyse`: the live detector's windows and event logic.
    """
    probs = np.array([np.nan if e.p is None else e.p for e in events if isinstance(e, Window)], dtype=np.float64)
    onsets = [e.onset for e in events if isinstance(e, AngerStart)]
    ends = [e.last_angry for e in events if isinstance(e, AngerEnd)]
    scored = probs[~np.isnan(probs)]
    return {
        "windows": [None if np.isnan(p) else round(float(p), 6) for p in probs],
        "p_max": round(float(scored.max()), 6) if len(scored) else None,
        "angry_share": round(float(np.mean(scored >= threshold)), 4) if len(scored) else None,
        "segments": [[round(a, 3), round(b, 3)] for a, b in zip(onsets, ends, strict=True)],
    }


@dataclass(frozen=True)
class Job:
    """What every recording of a batch is scored with (sent to the workers with each task)."""

    model: str | None = None
    """A model path, or None for the packaged one."""
    config: DetectorConfig = field(default_factory=DetectorConfig)
    channels: str = "mix"
    """'mix' or 'split' (see `channels.select`)."""
    timeout: float = DEFAULT_TIMEOUT


def record(path: str, recording: Recording, detector: AngerDetector, mode: str = "mix") -> dict[str, Any]:
    """The results line of a recording: where, how long, its window scores and their summary.

    Mixed (`mode` 'mix'): the summary of the one stream at the top level, `channels` null. Split: one summary
    per channel in `channels` (each with its `channel` number), and at the top level only `p_max`, the highest
    of any channel.
    """
    threshold = detector.config.threshold
    streams = [
        (c, summarise(detector.analyse(x, recording.rate), threshold))
        for c, x in channels.select(recording.samples, mode)
    ]
    head = {
        "path": path,
        "duration": round(recording.duration, 3),
        "sample_rate": recording.rate,
        **settings_fields(detector.config),
    }
    if mode == "mix":
        summary, per_channel = streams[0][1], None
    else:
        per_channel = [{"channel": c, **s} for c, s in streams]
        peaks = [s["p_max"] for s in per_channel if s["p_max"] is not None]
        summary = {"windows": None, "p_max": max(peaks, default=None), "angry_share": None, "segments": None}
    return {**head, **summary, "channels": per_channel, "error": None, "warning": recording.warning}


def settings_fields(config: DetectorConfig) -> dict[str, Any]:
    """The detector settings a line records (those of SETTINGS), so that it says how it was scored."""
    return {name: getattr(config, name) for name in SETTINGS}


def error_record(path: str, config: DetectorConfig, message: str) -> dict[str, Any]:
    """The line of a recording that could not be scored: the same keys, null data, a one-line error."""
    empty = dict.fromkeys(("windows", "p_max", "angry_share", "segments", "channels"))
    return {
        "path": path,
        "duration": None,
        "sample_rate": None,
        **settings_fields(config),
        **empty,
        "error": message,
        "warning": None,
    }


def _score(path: str, detector: AngerDetector, mode: str, cancelled: Callable[[], bool]) -> dict[str, Any]:
    try:
        check_input(path)
        recording = read_recording(path, cancelled)
    except InputError as exc:
        return error_record(path, detector.config, str(exc))
    return record(path, recording, detector, mode)


def score_file(path: str, job: Job) -> dict[str, Any]:
    """Read, score and summarise one file (on a worker); an unusable file gives an error record.

    Only regular files are opened (a FIFO or device would block). The work runs in a thread of its own:
    after `job.timeout` seconds the file gets an error record and is given up (its reading stops at the next
    block; a read blocked in the system stays blocked, in that thread only). ModelError propagates: a model
    the workers cannot load stops the job.
    """
    if job.model not in _MODELS:
        _MODELS[job.model] = AngerModel(job.model, threads=1)
    detector = AngerDetector(_MODELS[job.model], config=job.config)
    done: list[dict[str, Any]] = []
    failed: list[BaseException] = []
    cancel = threading.Event()

    def work() -> None:
        try:
            done.append(_score(path, detector, job.channels, cancel.is_set))
        except BaseException as exc:  # handed to the caller's thread
            failed.append(exc)

    thread = threading.Thread(target=work, name="anger-batch-file", daemon=True)
    thread.start()
    thread.join(job.timeout)
    if thread.is_alive():
        cancel.set()
        return error_record(path, job.config, f"timed out after {job.timeout:g} s (see --timeout): {path}")
    if failed:
        raise failed[0]
    return done[0]


def score_files(paths: list[bytes], job: Job) -> list[dict[str, Any]]:
    """The worker task: the lines of a chunk of files, in order. Paths travel as bytes: a name that is not
    UTF-8 cannot cross Dask's messages as a string."""
    return [score_file(os.fsdecode(path), job) for path in paths]


# --- the archive --------------------------------------------------------------------------------------


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in AUDIO_EXTENSIONS:
                yield Path(root) / name


def find_recordings(patterns: list[str], warn: Callable[[str], None]) -> list[str]:
    """Absolute paths of the recordings named by files, folders (recursive) and glob patterns, in order.

    A file reached twice (named twice, or through a symlink) is listed once, by the first path that reached
    it. A literal path that does not exist, or nothing found at all, is an InputError (before any output is
    written); a pattern or folder that matches nothing while others do is reported through `warn`.
    """
    found: dict[str, str] = {}  # real path -> the path that reached it first
    unmatched = []
    for pattern in patterns:
        is_glob = glob.has_magic(pattern)
        if not is_glob and not os.path.lexists(pattern):
            raise InputError(f"no such file: {shown(pattern)}")
        matches = sorted(glob.glob(pattern, recursive=True)) if is_glob else [pattern]
        paths = [q for m in matches for q in (_walk(Path(m)) if Path(m).is_dir() else [Path(m)])]
        if not paths:
            unmatched.append(pattern)
        for p in paths:
            found.setdefault(os.path.realpath(p), os.path.abspath(p))
    if not found:
        raise InputError(f"no audio files found in {' '.join(map(shown, patterns))}")
    for pattern in unmatched:
        warn(f"no audio files match {shown(pattern)}")
    return list(found.values())


def chunks(paths: list[str]) -> Iterator[list[str]]:
    """Consecutive paths grouped into tasks of up to CHUNK_BYTES of files (or CHUNK_FILES files): short clips
    share a task, so Dask's few milliseconds per task do not outweigh their scoring; a long call has its own."""
    chunk: list[str] = []
    size = 0
    for path in paths:
        try:
            n = os.path.getsize(path)
        except OSError:
            n = 0
        if chunk and (size + n > CHUNK_BYTES or len(chunk) == CHUNK_FILES):
            yield chunk
            chunk, size = [], 0
        chunk.append(path)
        size += n
    if chunk:
        yield chunk


def read_results(data: bytes, name: str) -> list[dict[str, Any]]:
    """The records of a batch results file's contents (`name`: how messages call it); InputError naming the
    line that is not a record."""
    records = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{name} line {number}: not JSON ({exc.msg}): not batch results") from None
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            raise InputError(f'{name} line {number}: a JSON line without a "path": not batch results') from None
        records.append(record)
    return records


def done_paths(sink: BinaryIO, name: str) -> set[str]:
    """Paths already in a results file open for appending (under its lock); drops a last line cut short by a
    crash so that appending is safe. InputError if the file holds anything but results lines."""
    sink.seek(0)
    data = sink.read()
    if data and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
        sink.truncate(len(data))
    sink.seek(0, os.SEEK_END)
    return {record["path"] for record in read_results(data, name)}


class SchedulerError(Exception):
    """A --scheduler address that is malformed, unreachable or has no workers (a usage error)."""


@contextmanager
def connect(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the cluster at `scheduler`, or of a LocalCluster of `workers` single-threaded processes."""
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")  # also read by the worker processes
    import logging

    import dask
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler is not None:
        client = None
        try:
            client = Client(scheduler, timeout="10s")
            client.wait_for_workers(1, timeout=60)
        except (OSError, ValueError, TypeError) as exc:  # unreachable, no workers joined, not an address
            if client is not None:
                client.close()
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SchedulerError(f"--scheduler {scheduler}: {reason}") from None
        with client:
            yield client
        return
    # Ctrl-C reaches the whole process group: the worker processes inherit "ignore SIGINT" (no tracebacks
    # from them) and this process shuts them down.
    on_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with dask.config.set(WORKER_CONFIG):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address="127.0.0.1:0",  # its HTTP server (health, no dashboard without bokeh) on loopback,
                # on a free port: the default 8787 may be taken, and Dask would warn on stderr
                silence_logs=logging.ERROR,
            )
    finally:
        signal.signal(signal.SIGINT, on_sigint)
    with cluster, Client(cluster) as client:
        yield client


def run(
    client: Client,
    paths: list[str],
    job: Job,
    write: Callable[[dict[str, Any]], None],
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Score `paths` on the cluster, calling `write` with each record as it completes (in completion order),
    until done or `stopped()`. A bounded number of tasks is in flight, whatever the size of the archive."""
    from distributed import as_completed

    todo = chunks(paths)
    in_flight = max(4 * sum(client.nthreads().values()), 16)
    pending: dict[Any, list[str]] = {}
    queue = as_completed()

    def submit(chunk: list[str] | None) -> None:
        if chunk:
            future = client.submit(score_files, [os.fsencode(p) for p in chunk], job, pure=False)
            pending[future] = chunk
            queue.add(future)

    for _ in range(in_flight):
        submit(next(todo, None))
    for future in queue:
        chunk = pending.pop(future)
        try:
            lines = future.result()
        except ModelError:
            raise
        except Exception as exc:  # a worker died on a file, or a bug: find the file, the job goes on
            if len(chunk) > 1:
                for path in chunk:
                    submit([path])
                continue
            lines = [error_record(chunk[0], job.config, f"{type(exc).__name__}: {exc}".splitlines()[0])]
        future.release()
        for line in lines:
            write(line)
        if stopped():
            return
        submit(next(todo, None))


@contextmanager
def progress_bar(total: int, label: str = "batch") -> Iterator[Callable[[float], None]]:
    """A rich progress bar on stderr: recordings, audio hours, speed in x real time. Yields `advance`, called
    with each finished recording's duration in seconds."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("recordings, {task.fields[hours]:.2f} h audio, {task.fields[speed]:.0f}x real time"),
        TimeRemainingColumn(),
    )
    start, audio_s = time.monotonic(), 0.0
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task(label, total=total, hours=0.0, speed=0.0)

        def advance(seconds: float) -> None:
            nonlocal audio_s
            audio_s += seconds
            speed = audio_s / max(time.monotonic() - start, 1e-9)
            progress.update(task, advance=1, hours=audio_s / 3600, speed=speed)

        yield advance


# --- the command --------------------------------------------------------------------------------------


def batch(
    paths: Annotated[
        list[str],
        typer.Argument(metavar="PATH", help="Audio files, folders (searched recursively) or quoted glob patterns."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE", help="Results: one JSON line per recording.")],
    scheduler: Annotated[
        str | None,
        typer.Option(
            metavar="ADDRESS", help="A running Dask scheduler, e.g. tcp://10.0.0.5:8786. [default: a local one]"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help=f"Worker processes of the local cluster. [default: {DEFAULT_WORKERS}]"),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip recordings already in --out; append.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    threshold: options.Threshold = None,
    model: options.Model = None,
    min_dbfs: options.MinDbfs = None,
    patience: options.Patience = None,
    hysteresis: options.Hysteresis = None,
    hold: options.Hold = None,
    config_file: options.ConfigFile = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar on stderr.")] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.001, metavar="SECONDS", help="Seconds a worker may spend on one file before it gets an error line."
        ),
    ] = DEFAULT_TIMEOUT,
    channel_mode: Annotated[
        str,
        typer.Option(
            "--channels",
            metavar="MODE",
            help="mix: score the channels averaged; split: each channel as its own stream (calls).",
        ),
    ] = "mix",
) -> None:
    """Score an archive of recordings on a Dask cluster: one JSON line per recording in --out.

    Exit codes: 0 all scored; 3 some failed (see their "error") or none found; 2 usage or scheduler unreachable;
    5 model error; 6 --out cannot be written (or another batch is writing it); 130 interrupted (rerun with
    --resume).
    """
    from .stdio import EXIT_INPUT, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, OutputError, fail, require, warn

    require("distributed", "batch", "batch")
    settings = options.detector_settings(
        config_file,
        threshold=threshold,
        model=model,
        min_dbfs=min_dbfs,
        patience=patience,
        hysteresis=hysteresis,
        hold=hold,
    )
    if channel_mode not in channels.MODES:
        fail(f"--channels must be one of {', '.join(channels.MODES)}", EXIT_USAGE)
    if scheduler is not None and workers is not None:
        fail("--workers sizes the local cluster; a --scheduler cluster has its own `dask worker`s", EXIT_USAGE)
    cores = os.cpu_count() or 1
    if workers is not None and workers > WORKERS_PER_CORE * cores:
        fail(
            f"--workers {workers} on {cores} cores: at most {WORKERS_PER_CORE * cores} (one per core scores the "
            "most; more only compete for the cores)",
            EXIT_USAGE,
        )
    try:
        recordings = find_recordings(paths, warn)
    except InputError as exc:
        fail(str(exc), EXIT_INPUT)
    model_path = settings.model  # a packaged model's name or None: the same on every worker
    if not is_packaged(model_path):
        model_path = str(Path(model_path).absolute())
    try:
        AngerModel(model_path)  # fail fast, before writing anything or starting a cluster
    except ModelError as exc:
        fail(str(exc), EXIT_MODEL)
    mode = "append" if resume else "replace" if overwrite else "new"
    try:
        sink = open_output(out, mode)
    except OutputExists as exc:
        fail(f"{exc}: add --resume to continue it or --overwrite to replace it", EXIT_USAGE)
    except OutputError as exc:
        fail(str(exc), EXIT_OUTPUT)
    with sink:  # held, and locked, until the job ends
        try:
            done = done_paths(sink, shown(out)) if resume else set()
        except InputError as exc:
            fail(f"--resume: {exc}", EXIT_INPUT)
        todo = [p for p in recordings if p not in done]
        if done:
            warn(f"resuming: {len(recordings) - len(todo)} of {len(recordings)} recordings already in {shown(out)}")
        job = Job(model_path, settings.config, channel_mode, timeout)
        try:
            _score_all(sink, out, todo, job, scheduler, workers, quiet)
        except typer.Exit as exit:
            if exit.exit_code and mode == "new" and os.fstat(sink.fileno()).st_size == 0:
                os.unlink(out)  # nothing written: a rerun needs no --overwrite
            raise


def _score_all(
    sink: BinaryIO, out: Path, todo: list[str], job: Job, scheduler: str | None, workers: int | None, quiet: bool
) -> None:
    """Score `todo` into the open, locked results file `sink`; exit with batch's codes."""
    from .stdio import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_MODEL, EXIT_OUTPUT, EXIT_USAGE, OutputError, fail, warn

    name = shown(out)

    failed, warned, stop = 0, 0, threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        """Ctrl-C or SIGTERM: stop after the task at hand (a second one stops at once)."""
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        with (
            connect(scheduler, workers or DEFAULT_WORKERS) as client,
            progress_bar(len(todo)) if not quiet else nullcontext(lambda line: None) as advance,
        ):

            def write(line: dict[str, Any]) -> None:
                nonlocal failed, warned
                failed += line["error"] is not None
                warned += line["warning"] is not None
                try:
                    sink.write(json.dumps(line, separators=(",", ":"), allow_nan=False).encode() + b"\n")
                except OSError as exc:
                    raise OutputError(f"cannot write {name}: {exc.strerror or exc}") from None
                advance(line["duration"] or 0.0)

            run(client, todo, job, write, stop.is_set)
    except KeyboardInterrupt:
        stop.set()
    except ModelError as exc:
        fail(f"on a worker: {exc}", EXIT_MODEL)
    except OutputError as exc:
        fail(str(exc), EXIT_OUTPUT)
    except (SchedulerError, OSError) as exc:  # a bad --scheduler, or a local cluster that could not start
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, EXIT_USAGE)
    if warned:
        warn(f'{warned} of {len(todo)} recordings were scored with a warning (see their "warning" in {name})')
    if stop.is_set():
        fail(f"interrupted: the finished recordings are in {name}; rerun with --resume", EXIT_INTERRUPTED)
    if failed:
        fail(f'{failed} of {len(todo)} recordings could not be scored (see their "error" in {name})', EXIT_INPUT)
