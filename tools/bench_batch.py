"""Benchmark of `anger-stream batch`: audio hours scored per wall-clock hour (x real time).

The same files through (a) a plain single-process loop (one onnxruntime thread) and (b) the Dask engine on a
LocalCluster of 1 and 2 worker processes; decoding and resampling included everywhere. Prints a Markdown table.

    python -m tools.bench_batch --data ../shared/data --files 200
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from anger_stream.batch import connect, find_recordings, run, score_file

SHARED = Path(os.environ.get("ANGER_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def pick(folder: Path, n: int) -> list[str]:
    """n audio files spread evenly over the sorted files of a folder (so over all its corpora)."""
    files = find_recordings([str(folder)], print)
    if len(files) < n:
        raise SystemExit(f"only {len(files)} audio files in {folder}, asked for {n}")
    return [files[i * len(files) // n] for i in range(n)]


def plain_loop(files: list[str], model: str | None) -> tuple[float, float]:
    """(audio seconds, wall seconds) of scoring the files one after the other in this process."""
    start, audio_s = time.perf_counter(), 0.0
    for path in files:
        audio_s += score_file(path, model, 0.6)["duration"] or 0.0
    return audio_s, time.perf_counter() - start


def engine(files: list[str], model: str | None, workers: int) -> tuple[float, float, float, float]:
    """(audio seconds, job wall seconds, cluster start seconds, warm job seconds) on a LocalCluster of
    `workers` processes; the warm job runs the files again once every worker has loaded the model."""
    lines: list[dict] = []
    t0 = time.perf_counter()
    with connect(None, workers) as client:
        t1 = time.perf_counter()
        run(client, files, model, 0.6, lines.append)
        t2 = time.perf_counter()
        run(client, files, model, 0.6, lambda line: None)
        t3 = time.perf_counter()
    assert len(lines) == len(files) and not any(line["error"] for line in lines)
    return sum(line["duration"] for line in lines), t2 - t1, t1 - t0, t3 - t2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED / "data", help="folder of recordings")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--model", type=str, default=None, help="ONNX model (default: the packaged one)")
    args = parser.parse_args()

    files = pick(args.data, args.files)
    load_before = os.getloadavg()[0]
    score_file(files[0], args.model, 0.6)  # the loop's process loads the model once, as a warm worker has
    audio_s, wall = plain_loop(files, args.model)
    rows = [("plain loop, 1 process", None, None, wall, audio_s)]
    for workers in (1, 2):
        audio_s, wall, startup, warm = engine(files, args.model, workers)
        rows.append((f"batch engine, {workers} worker{'s' * (workers > 1)}", startup, wall, warm, audio_s))

    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"{len(files)} files, {audio_s / 3600:.3f} h of audio, {os.cpu_count()} CPUs, {load}\n")
    print("| engine | cluster start s | first pass s (cold) | warm pass s | x real time, all in | x real time, warm |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, startup, wall, warm, audio_s in rows:
        cells = ["-", "-"] if startup is None else [f"{startup:.1f}", f"{wall:.1f}"]
        all_in = audio_s / (warm if startup is None else startup + wall)
        print(f"| {name} | {' | '.join(cells)} | {warm:.1f} | {all_in:.0f} | {audio_s / warm:.0f} |")


if __name__ == "__main__":
    main()
