"""Benchmark of `anger-stream batch`: audio hours scored per wall-clock hour (x real time).

The same files through (a) a plain single-process loop (one onnxruntime thread) and (b) the Dask engine on a
LocalCluster of 1 and 2 worker processes; decoding and resampling included everywhere. Prints a Markdown table.

    python -m tools.bench batch --data ../shared/data --files 200
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

from anger_stream.batch import connect, find_recordings, run, score_file
from tools.manifest import SHARED


def pick(folder: Path, n: int) -> list[str]:
    """n audio files spread evenly over the sorted files of a folder (so over all its corpora)."""
    files = find_recordings([str(folder)], print)
    if len(files) < n:
        raise SystemExit(f"only {len(files)} audio files in {folder}, asked for {n}")
    return [files[i * len(files) // n] for i in range(n)]


def best_of(repeat: int, job: Callable[[], object], cpu: Callable[[], float]) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `repeat` runs of job; `cpu()` reads the CPU time of every process
    involved. The CPU is shared with other work: wall time is noisy, CPU time much less so."""
    runs = []
    for _ in range(repeat):
        wall, used = time.perf_counter(), cpu()
        job()
        runs.append((time.perf_counter() - wall, cpu() - used))
    return min(runs)


def plain_loop(files: list[str], model: str | None) -> None:
    """Score the files one after the other in this process."""
    for path in files:
        score_file(path, model, 0.6)


def engine(files: list[str], model: str | None, workers: int, repeat: int) -> tuple[float, float, float, float]:
    """(cluster start, first pass, best warm pass) wall seconds and the warm pass's CPU seconds (workers,
    scheduler and client) on a LocalCluster of `workers` processes; the first pass includes the workers'
    imports and model loading."""
    lines: list[dict] = []
    t0 = time.perf_counter()
    with connect(None, workers) as client:
        t1 = time.perf_counter()
        run(client, files, model, 0.6, lines.append)
        t2 = time.perf_counter()

        def cpu() -> float:
            return sum(client.run(time.process_time).values()) + time.process_time()

        warm, warm_cpu = best_of(repeat, lambda: run(client, files, model, 0.6, lambda line: None), cpu)
    assert len(lines) == len(files) and not any(line["error"] for line in lines)
    return t1 - t0, t2 - t1, warm, warm_cpu


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=SHARED / "data", help="folder of recordings")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--model", type=str, default=None, help="ONNX model (default: the packaged one)")
    parser.add_argument("--repeat", type=int, default=3, help="warm passes; the fastest one counts")


def run_report(args: argparse.Namespace, command: str) -> None:
    """Time the three engines over the same files and print the Markdown table."""
    files = pick(args.data, args.files)
    load_before = os.getloadavg()[0]
    audio_s = sum(score_file(path, args.model, 0.6)["duration"] for path in files)  # and loads the model
    loop = best_of(args.repeat, lambda: plain_loop(files, args.model), time.process_time)
    rows = [("plain loop, 1 process", None, None, *loop)]
    for workers in (1, 2):
        rows.append(
            (f"batch engine, {workers} worker{'s' * (workers > 1)}", *engine(files, args.model, workers, args.repeat))
        )

    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"`{command}`: {len(files)} files, {audio_s / 3600:.3f} h of audio, {os.cpu_count()} CPUs, {load}\n")
    print(
        "| engine | cluster start s | first pass s | warm pass s | x real time, all in | x real time, warm "
        "| audio s per CPU s (warm) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, startup, cold, warm, cpu in rows:
        cells = ["-", "-"] if startup is None else [f"{startup:.1f}", f"{cold:.1f}"]
        all_in = audio_s / (warm if startup is None else startup + cold)
        print(
            f"| {name} | {' | '.join(cells)} | {warm:.1f} | {all_in:.0f} | {audio_s / warm:.0f} | {audio_s / cpu:.0f} |"
        )
