"""The optimisations table (each change measured before/after in the same run, alternating between them) and
the cost of the Python side of a stream."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from anger_stream import audio
from anger_stream.detector import DetectorConfig, windows
from anger_stream.model import AngerModel
from anger_stream.streams import StreamSet
from tools.bench.e2e import NullModel, StreamLoad
from tools.bench.timing import Budget, Stats, interleaved, session


def row(change: str, unit: str, before: list[float], after: list[float], scale: float = 1e3) -> dict:
    """One table row from two samples of times (medians, scaled to `unit`)."""
    b, a = Stats.of(before), Stats.of(after)
    return {
        "change": change,
        "unit": unit,
        "before": b.median * scale,
        "after": a.median * scale,
        "speedup": b.median / a.median,
    }


def session_rows(models: dict[str, str], x: np.ndarray, seconds: float, big: int) -> list[dict]:
    """onnxruntime options: graph optimisation, spinning, threads, batch size; int8 vs float32."""
    fp32 = models["fp32"]
    level = ort.GraphOptimizationLevel

    def run(s: ort.InferenceSession, n: int) -> Callable[[], object]:
        return lambda: s.run(None, {"audio": x[:n]})

    s_off, s_basic, s_all = (
        session(fp32, 1, level=v) for v in (level.ORT_DISABLE_ALL, level.ORT_ENABLE_BASIC, level.ORT_ENABLE_ALL)
    )
    t = interleaved({"off": run(s_off, 1), "basic": run(s_basic, 1), "all": run(s_all, 1)}, seconds * 3)
    rows = [
        row("graph optimisation off -> ENABLE_BASIC (fp32, 1 window, 1 thread)", "ms", t["off"], t["basic"]),
        row("ENABLE_BASIC -> ENABLE_ALL (current; Conv+ReLU fusion, NCHWc)", "ms", t["basic"], t["all"]),
    ]
    for name, path in models.items():
        one = session(path, 1)
        t = interleaved({"big": run(one, big), "4": run(one, 4)}, seconds * 2)
        per_window = [v / big for v in t["big"]], [v / 4 for v in t["4"]]
        rows.append(row(f"batch {big} -> 4 ({name}, 1 thread)", "ms/window", *per_window))
    for n in (1, 16):
        spin, calm = session(fp32, 2, True), session(fp32, 2, False)
        t = interleaved({"spin": run(spin, n), "calm": run(calm, n)}, seconds * 2)
        rows.append(row(f"intra-op spinning on -> off (fp32, 2 threads, batch {n})", "ms/call", t["spin"], t["calm"]))
    for n in (1, 4, big):
        one, two = session(fp32, 1), session(fp32, 2)
        t = interleaved({"1": run(one, n), "2": run(two, n)}, seconds * 2)
        rows.append(row(f"1 -> 2 intra-op threads (fp32, batch {n})", "ms/call", t["1"], t["2"]))
    if "int8" in models:
        t = interleaved({"fp32": run(s_all, 1), "int8": run(session(models["int8"], 1), 1)}, seconds * 2)
        rows.append(row("float32 -> static int8 QDQ per-channel (1 window, 1 thread)", "ms", t["fp32"], t["int8"]))
    return rows


def streamset_rows(name: str, path: str, x16: np.ndarray, batch: int, n: int, cycles: int) -> list[dict]:
    """StreamSet settings, cumulative, at n streams: cycle time (push + tick) per stream.

    Starts from the StreamSet's old settings (AngerModel threads=2, max_batch 256, no worker threads), run on
    the current code, and ends at the benchmark's setting.
    """
    two, one = AngerModel(path, threads=2), AngerModel(path, threads=1)
    steps: list[tuple[str, Callable[[], StreamSet]]] = [
        ("old settings (2 intra-op threads, max_batch 256, no workers)", lambda: StreamSet(two, None, 256, 1)),
        ("2 worker threads x 1-thread session instead of 2 intra-op threads", lambda: StreamSet(one, None, 256, 2)),
        (f"max_batch 256 -> {batch}", lambda: StreamSet(one, None, batch, 2)),
    ]
    loads = [StreamLoad(make(), x16, n) for _, make in steps]
    for load in loads:
        load.cycle()
        load.cycle()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(cycles):
        for load, t in zip(loads, times, strict=True):
            t.append(sum(load.cycle()[:2]) / n)
    return [
        row(f"{name} StreamSet, {n} streams: {steps[i][0]}", "us/stream", times[i - 1], times[i], 1e6)
        for i in range(1, len(steps))
    ] + [row(f"{name} StreamSet, {n} streams: both settings", "us/stream", times[0], times[-1], 1e6)]


def python_side(x16: np.ndarray, seconds: float) -> dict[str, Stats]:
    """StreamSet.push of 600 ms to one stream with a tick that finds nothing due, and the level and
    normalisation of 4 windows (audio.measure_and_normalise), in isolation."""
    config = DetectorConfig()
    chunk = x16[: config.hop]
    streams = StreamSet(NullModel(), config, workers=1)
    streams.add(0)
    batch = np.stack([w.audio for w in windows(x16, config)[:4]])
    t = interleaved(
        {
            "push": lambda: (streams.push(0, chunk), streams.tick()),
            "score4": lambda: audio.measure_and_normalise(batch),
        },
        seconds,
    )
    return {k: Stats.of(v) for k, v in t.items()}


def measure_all(models: dict, x: np.ndarray, x16: np.ndarray, batches: dict[str, int], b: Budget) -> list[dict]:
    """Every row of the optimisations table measured in this run; `batches`: the StreamSet max_batch per model."""
    paths = {k: str(v) for k, v in models.items()}
    n, cycles = (64, 2) if b.quick else (300, 8)
    rows = session_rows(paths, x, b.t(1.0), 64 if b.quick else 256)
    for name, path in paths.items():
        rows += streamset_rows(name, path, x16, batches[name], n, cycles)
    return rows
